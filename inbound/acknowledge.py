"""Acknowledgements (RFC 3834) of what people write to the abuse and privacy addresses.

The privacy policy promises to "promptly respond" to complaints: a reply is queued at once, From the
address that was written to, with the case id and what happens next, and nothing of the tenant's data.
It is never sent where an automatic reply does harm (RFC 3834 §2): to a null sender, in answer to an
automatic message or a mailing list, to a mailer daemon or one of our own addresses, or to a mailbox
provider's feedback loop; and at most once per complainant per `policy.ack_interval`.
"""
from __future__ import annotations

import email.policy
import email.utils
import re
from email.message import EmailMessage

from inbound import bounce_signs
from inbound.dsn import Fields
from inbound.mime import decode_words, first
from policy.settings import Provider

_MSGID = re.compile(r"<[^<>\s]{1,250}>")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")

NEXT_STEPS = {
    "abuse": ("What happens next:\n"
              "- If the message you report was sent through our service, the recipient it was sent to no longer\n"
              "  receives mail from that sender through us.\n"
              "- A person on our abuse desk reviews the case. Senders whose mail draws complaints are suspended.\n"
              "- To add information, reply to this message and keep the case id in the subject.\n"),
    "privacy": ("What happens next:\n"
                "- A person on our privacy desk answers your request within one month.\n"
                "- We may ask you to confirm that the address is yours before we disclose or erase anything.\n"
                "- To add information, reply to this message and keep the case id in the subject.\n"),
}


def refusal(head: Fields, envelope_sender: str, provider: Provider) -> str | None:
    """Why no acknowledgement may be sent to this message, or None when one is due."""
    sender = envelope_sender.strip().strip("<>").lower()
    if not sender:
        return "null envelope sender"
    submitted = first(head, "auto-submitted").split(";")[0].strip().lower()
    if submitted and submitted != "no":
        return f"Auto-Submitted: {submitted}"
    if "list-id" in head:
        return "sent through a mailing list (List-Id)"
    precedence = first(head, "precedence").lower()
    if precedence in ("bulk", "list", "junk"):
        return f"Precedence: {precedence}"
    if bounce_signs.sender(sender, "") or bounce_signs.sender(first(head, "from"), ""):
        return "sent by a mailer daemon"
    if sender.rpartition("@")[2] in {d.lower() for d in provider.domains}:
        return "sent from one of our own addresses"
    return None


def compose(provider: Provider, kind: str, case_id: str, to: str, head: Fields, interval: float) -> bytes:
    """The acknowledgement of one case, ready for the outbox."""
    address = provider.abuse_address if kind == "abuse" else provider.privacy_address
    desk = "Abuse desk" if kind == "abuse" else "Privacy desk"
    subject = _CONTROL.sub(" ", decode_words(first(head, "subject")))[:150].strip()
    message_id = first(head, "message-id")
    references = _MSGID.findall(first(head, "references"))[-10:] + _MSGID.findall(message_id)[:1]
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = email.utils.formataddr((f"{provider.domain} {desk}", address))
    msg["To"] = to
    msg["Subject"] = f"Auto: [{case_id}] {subject or 'Your message'}"
    msg["Date"] = email.utils.formatdate(usegmt=True)
    msg["Message-ID"] = email.utils.make_msgid(case_id.lower(), domain=provider.domain)
    if references:
        msg["In-Reply-To"] = references[-1]
        msg["References"] = " ".join(references)
    msg["Auto-Submitted"] = "auto-replied"
    msg["X-Auto-Response-Suppress"] = "All"
    what = "report" if kind == "abuse" else "request"
    msg.set_content(f"Thank you. We received your {what} and opened case {case_id}.\n\n{NEXT_STEPS[kind]}\n"
                    f"This is an automatic acknowledgement; you receive at most one every {_hours(interval)} "
                    f"from {address}.\n"
                    f"-- \n{provider.domain} {desk.lower()}\n", charset="us-ascii")
    return msg.as_bytes()


def _hours(seconds: float) -> str:
    hours = max(1, round(seconds / 3600))
    return "hour" if hours == 1 else f"{hours} hours"

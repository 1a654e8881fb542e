"""The tell-tale signs of a bounce that is no RFC 3464 report: who sent it, its Subject, its wording.

Old and national mail systems write free text, in their own language, from senders such as
MAILER-DAEMON, postmaster, MDaemon or "Mail Delivery System", and often mark it Precedence: bulk or
Auto-Submitted: auto-replied like an out-of-office. `inbound/classify` weighs the three signs: a mail
system's sender with a bounce Subject or wording, or a bounce Subject with bounce wording. Each sign
is 'failure', 'delay' or None (the sender: how it shows, or None). The languages covered are those of
the largest mailbox providers: English, German, French, Spanish, Italian, Portuguese, Dutch, Polish,
Russian, Czech, Swedish, Danish and Norwegian, Hungarian, Turkish, Chinese, Japanese.
"""
from __future__ import annotations

import re

WORDING_CHARS = 8192
_DELAY_SUBJECT = re.compile(
    r"delivery status notification \(delay\)|warning: message \S+ delayed|delayed mail|delivery delayed"
    r"|warning: could not send message for past|not yet been delivered|(?:mail )?delivery warning"
    r"|zustellung verz[öo]gert|distribution retard[ée]e|entrega retrasada", re.I)
_FAIL_SUBJECT = re.compile(
    r"undeliver|undelivered|non-?deliver|not delivered|(?:could|can)(?:n't| ?not) be delivered|failure notice"
    r"|delivery (?:status notification(?! \((?:success|relay|delay))|failure|failed|has failed|problem|error)"
    r"|mail delivery failed|failure delivery|failed (?:mail|delivery)|returned (?:mail|to sender)"
    r"|mail (?:system )?error|bounced mail|user unknown|permanent (?:delivery )?(?:failure|error)"
    r"|unzustellbar|nicht zustellbar|non remis|non distribuable|[ée]chec de (?:la )?(?:remise|distribution)"
    r"|no (?:se (?:ha podido|pudo) )?entrega[dr]|mancat[oa] (?:consegna|recapito)|impossibile recapitare"
    r"|n[ãa]o (?:foi )?entregue|niet (?:afgeleverd|bezorgd)|onbestelbaar|niedostarcz|nie dostarczon"
    r"|не доставлен|недоставлен|nedoru[čc]iteln|olevererbar|ej levererat|kunne ikke leveres|kan ikke leveres"
    r"|k[ée]zbes[íi]thetetlen|teslim edilemedi|iletilemedi|退信|(?:投递|传输|发送)失败|未能送达|配信(?:不能|エラー|失敗)",
    re.I)
_REPLY_OR_FORWARD = re.compile(r"\s*(?:re|fwd?|aw|wg|tr|sv|vs|rif|enc)\s*:", re.I)
_DAEMON = re.compile(r"(?<![\w.+-])(mailer-?daemon|mail-?daemon|mdaemon|postmaster)(?=[@>\s\"]|$)", re.I)
_SYSTEM_NAME = re.compile(r"mail delivery (?:subsystem|system|service)|mail\.delivery\.system|mail administrator"
                          r"|system administrator|automated response", re.I)
_EMPTY_FROM = re.compile(r"^[^<]*<>\s*$")
_DELAY_WORDS = re.compile(
    r"will (?:continue to|keep) (?:try|retr)|still (?:be )?trying|will (?:be )?retr(?:y|ied)|not yet been delivered"
    r"|warning message only|do not need to resend|delivery (?:is |has been )?delayed|has been delayed"
    r"|noch nicht zugestellt|wird (?:weiterhin|erneut) versucht", re.I)
_FAIL_WORDS = re.compile(
    r"(?:could|can)(?:n't| ?not) be (?:delivered|sent)|(?:was|were|has not been|have not been) (?:not )?delivered"
    r"|not be delivered|undeliverable|undelivered|delivery (?:to the following recipients? )?(?:has )?failed"
    r"|failed to deliver|unable to deliver|delivery (?:failure|problem)|permanent (?:fatal )?errors?"
    r"|fatal errors?|user unknown|unknown user|no such (?:user|mailbox|address|recipient)"
    r"|not a valid (?:user|recipient|address|mailbox)"
    r"|mailbox (?:unavailable|full|is full|not found)|over ?quota|quota exceeded|returned mail"
    r"|mail delivery (?:software|system|subsystem)|this is the mail system at|non-?delivery|did not reach"
    r"|could not reach|retry timeout exceeded|i'?m sorry to (?:have to )?inform you|was not accepted"
    r"|konnte nicht (?:zugestellt|ausgeliefert)|nicht zugestellt|unzustellbar|n'a pas pu [êe]tre (?:remis|distribu)"
    r"|non remis|no (?:se )?(?:pudo|ha podido) (?:ser )?entregar|n[ãa]o (?:p[ôo]de|foi poss[íi]vel) (?:ser )?entreg"
    r"|non [èe] stato possibile (?:consegnare|recapitare)|kon niet (?:worden )?(?:afgeleverd|bezorgd)"
    r"|nie (?:zosta[łl]a?|mo[żz]e by[ćc]) dostarczon|не (?:может быть |был[оа]? |удалось )?доставить"
    r"|не (?:может быть |был[оа]? )?доставлен|nemohla b[ýy]t doru[čc]ena|退信|无法(?:投递|发送|送达)|(?:投递|传输|发送)失败"
    r"|配信(?:でき|不能)",
    re.I)


def subject(text: str) -> str | None:
    """'delay' or 'failure' for a bounce Subject (not a person's reply to or forward of one), else None."""
    if _REPLY_OR_FORWARD.match(text):
        return None
    if _DELAY_SUBJECT.search(text):
        return "delay"
    return "failure" if _FAIL_SUBJECT.search(text) else None


def sender(from_: str, return_path: str) -> str | None:
    """How the message shows a mail system's or the null sender, or None."""
    if m := _DAEMON.search(from_):
        return f"From {m.group(1).upper()}"
    if m := _SYSTEM_NAME.search(from_):
        return f"From {m.group(0)}"
    if _EMPTY_FROM.match(from_):
        return "null From"
    return "null Return-Path" if return_path.strip() == "<>" else None


def wording(text: str) -> str | None:
    """'delay' or 'failure' when a message's own text reports mail it could not deliver, else None.
    Reports say so at their start: the first WORDING_CHARS are read."""
    text = text[:WORDING_CHARS]
    if _DELAY_WORDS.search(text):
        return "delay"
    return "failure" if _FAIL_WORDS.search(text) else None

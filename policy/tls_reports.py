"""TLS-RPT (RFC 8460): every outbound session to an MX host counted per recipient domain and UTC day, by all
nodes together in the store, and the day's aggregate report built from the counts.

A session is counted once, when it is opened: its policy (`sts`, `tlsa` or `no-policy-found`), the MX host and
address, and its result: `success` or an RFC 8460 §4.3 result type. relay/tls_report.py sends the reports.
"""
from __future__ import annotations

import calendar
import datetime
import email.policy
import email.utils
import gzip
import json
import re
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from policy.settings import Provider
from policy.store import Store

SUCCESS = "success"
KEEP_DAYS = 35                  # session counts are kept this long (a month of reports, sent or to be sent by hand)
POLICY_TYPES = {"mta-sts": "sts", "dane": "tlsa", "": "no-policy-found"}
MEDIA_TYPE = "application/tlsrpt+gzip"


@dataclass(frozen=True)
class Session:
    domain: str              # the policy domain: the recipient domain
    policy_type: str         # "sts" | "tlsa" | "no-policy-found"
    policy: tuple[str, ...]  # the policy-string: MTA-STS policy lines or TLSA records
    mx_host: str
    address: str             # the receiving IP
    result: str              # SUCCESS or the failure's result type
    sending_ip: str = ""     # the egress source's address, when it is not the host's default


def count(store: Store, day: str, session: Session) -> None:
    """One more session of this kind on `day` (YYYY-MM-DD, UTC)."""
    store.execute("INSERT INTO tls_sessions (day, domain, policy_type, policy, mx_host, address, result, sending_ip, "
                  "sessions) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1) ON CONFLICT (day, domain, policy_type, policy, mx_host, "
                  "address, result, sending_ip) DO UPDATE SET sessions = tls_sessions.sessions + 1",
                  [day, session.domain, session.policy_type, json.dumps(list(session.policy)), session.mx_host,
                   session.address, session.result, session.sending_ip])


def domains(store: Store, day: str, unsent: bool = False) -> list[str]:
    """The recipient domains with sessions on `day`; `unsent`: only those whose report no node has claimed."""
    left = " AND domain NOT IN (SELECT domain FROM tls_reports_sent WHERE day = ?)" if unsent else ""
    return [r["domain"] for r in store.all(f"SELECT DISTINCT domain FROM tls_sessions WHERE day = ?{left} ORDER BY domain",
                                            [day, day] if unsent else [day])]


def purge(store: Store, today: datetime.date) -> int:
    """Forget the counts of days more than KEEP_DAYS ago; how many rows went."""
    before = (today - datetime.timedelta(days=KEEP_DAYS)).isoformat()
    store.execute("DELETE FROM tls_reports_sent WHERE day < ?", [before])
    return store.execute("DELETE FROM tls_sessions WHERE day < ?", [before]).rowcount


def report(store: Store, day: str, domain: str, organization: str, contact: str) -> dict[str, Any]:
    """The RFC 8460 §4.4 report of `domain` for `day`: one entry per policy seen, its successful and failed
    session counts, and the failures by result type, MX host and addresses. `mx-host` holds an MTA-STS
    policy's mx patterns, else the MX hosts the sessions went to."""
    rows = store.all("SELECT policy_type, policy, mx_host, address, result, sending_ip, sessions FROM tls_sessions "
                     "WHERE day = ? AND domain = ? ORDER BY policy_type, policy, result, mx_host, address",
                     [day, domain])
    policies: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        entry = policies.setdefault((r["policy_type"], r["policy"]), {
            "policy": {"policy-type": r["policy_type"], "policy-string": json.loads(r["policy"]),
                       "policy-domain": domain, "mx-host": []},
            "summary": {"total-successful-session-count": 0, "total-failure-session-count": 0},
            "failure-details": []})
        if r["mx_host"] not in entry["policy"]["mx-host"]:
            entry["policy"]["mx-host"].append(r["mx_host"])
        if r["result"] == SUCCESS:
            entry["summary"]["total-successful-session-count"] += r["sessions"]
            continue
        entry["summary"]["total-failure-session-count"] += r["sessions"]
        detail = {"result-type": r["result"], "receiving-mx-hostname": r["mx_host"], "receiving-ip": r["address"],
                  "failed-session-count": r["sessions"]}
        if r["sending_ip"]:
            detail["sending-mta-ip"] = r["sending_ip"]
        entry["failure-details"].append(detail)
    for entry in policies.values():
        policy = entry["policy"]
        patterns = [line[4:] for line in policy["policy-string"] if line.startswith("mx: ")]
        policy["mx-host"] = patterns if policy["policy-type"] == "sts" and patterns else sorted(policy["mx-host"])
        if policy["policy-type"] == "no-policy-found":
            del policy["policy-string"]
        if not entry["failure-details"]:
            del entry["failure-details"]
    start = datetime.date.fromisoformat(day)
    return {"organization-name": organization,
            "date-range": {"start-datetime": f"{start}T00:00:00Z", "end-datetime": f"{start}T23:59:59Z"},
            "contact-info": contact, "report-id": f"{day}.{domain}@{organization}",
            "policies": list(policies.values())}


def gzipped(report: dict[str, Any]) -> bytes:
    return gzip.compress(json.dumps(report, indent=1).encode(), mtime=0)


def destinations(texts: list[str]) -> list[str]:
    """The rua URIs of the one TXT record that starts with "v=TLSRPTv1" (RFC 8460 §3); [] when there is not
    exactly one. Only mailto: and https: are kept, the schemes RFC 8460 defines."""
    records = [t for t in texts if re.match(r"^v=TLSRPTv1\s*(;|$)", t)]
    if len(records) != 1:
        return []
    fields = dict(part.strip().partition("=")[::2] for part in records[0].split(";") if "=" in part)
    uris = [u.strip() for u in fields.get("rua", "").split(",")]
    return [u for u in uris if re.match(r"^(mailto:[^@\s]+@[^@\s]+|https://\S+)$", u)]


def mail(provider: Provider, report: dict[str, Any], domain: str, to: str) -> bytes:
    """The report as RFC 8460 §5.3 mails it: multipart/report of report-type tlsrpt, the JSON gzipped in an
    application/tlsrpt+gzip part named submitter!domain!begin!end!id.json.gz."""
    day = report["date-range"]["start-datetime"][:10]
    begin = calendar.timegm(datetime.date.fromisoformat(day).timetuple())
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = email.utils.formataddr((f"{provider.domain} TLS reports", f"postmaster@{provider.domain}"))
    msg["To"] = to
    msg["Subject"] = f"Report Domain: {domain} Submitter: {provider.domain} Report-ID: <{report['report-id']}>"
    msg["Date"] = email.utils.formatdate(usegmt=True)
    msg["Message-ID"] = email.utils.make_msgid("tlsrpt", domain=provider.domain)
    msg["TLS-Report-Domain"] = domain
    msg["TLS-Report-Submitter"] = provider.domain
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(f"This is an aggregate TLS report (RFC 8460) from {provider.domain}\n"
                    f"about mail to {domain} on {day} (UTC).\n")
    msg.add_attachment(gzipped(report), maintype="application", subtype="tlsrpt+gzip",
                       filename=f"{provider.domain}!{domain}!{begin}!{begin + 86399}!{day}.json.gz")
    msg.set_type("multipart/report")
    msg.set_param("report-type", "tlsrpt")
    return msg.as_bytes()


def claim(store: Store, day: str, domain: str, node: str) -> bool:
    """True once per day and domain, to the node that sends its report (every node runs the daily job)."""
    return store.execute("INSERT INTO tls_reports_sent (day, domain, node) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                         [day, domain, node]).rowcount == 1

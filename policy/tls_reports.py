"""TLS-RPT (RFC 8460): every outbound session to an MX host counted per recipient domain and UTC day, by all
nodes together in the store, and the day's aggregate report built from the counts.

A session is counted once, when it is opened: its policy (`sts`, `tlsa` or `no-policy-found`), the MX host and
address, and its result: `success` or an RFC 8460 §4.3 result type. relay/tls_report.py sends the reports.
"""
from __future__ import annotations

import datetime
import gzip
import json
from dataclasses import dataclass
from typing import Any

from policy.store import Store

SUCCESS = "success"
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


def domains(store: Store, day: str) -> list[str]:
    return [r["domain"] for r in store.all("SELECT DISTINCT domain FROM tls_sessions WHERE day = ? ORDER BY domain",
                                            [day])]


def report(store: Store, day: str, domain: str, organization: str, contact: str) -> dict[str, Any]:
    """The RFC 8460 §4.4 report of `domain` for `day`: one entry per policy seen, its successful and failed
    session counts, and the failures by result type, MX host and addresses."""
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
        if entry["policy"]["policy-type"] == "no-policy-found":
            del entry["policy"]["policy-string"]
        if not entry["failure-details"]:
            del entry["failure-details"]
    start = datetime.date.fromisoformat(day)
    return {"organization-name": organization,
            "date-range": {"start-datetime": f"{start}T00:00:00Z", "end-datetime": f"{start}T23:59:59Z"},
            "contact-info": contact, "report-id": f"{day}.{domain}@{organization}",
            "policies": list(policies.values())}


def gzipped(report: dict[str, Any]) -> bytes:
    return gzip.compress(json.dumps(report, indent=1).encode(), mtime=0)


def claim(store: Store, day: str, domain: str, node: str) -> bool:
    """True once per day and domain, to the node that sends its report (every node runs the daily job)."""
    return store.execute("INSERT INTO tls_reports_sent (day, domain, node) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                         [day, domain, node]).rowcount == 1

"""`websofttt tls-report …`: the TLS-RPT reports (RFC 8460) of a day, shown or sent by hand (policy/tls_reports.py,
relay/tls_report.py)."""
from __future__ import annotations

import asyncio
import datetime
from typing import Any

import click

from policy import tls_reports
from relay import resolver as relay_dns
from relay import tls_report
from relay.cli.common import emit, json_option, with_settings, with_store


def _day(value: str | None) -> str:
    """YYYY-MM-DD, yesterday (UTC) by default: the last whole day."""
    if value is None:
        return (datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=1)).isoformat()
    try:
        return datetime.date.fromisoformat(value).isoformat()
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date such as 2026-12-05", param_hint="--day") from None


day_option = click.option("--day", default=None, metavar="YYYY-MM-DD", help="The UTC day (default: yesterday).")


@click.group("tls-report")
def tls_report_group() -> None:
    """TLS-RPT: the daily reports to recipient domains about the TLS of the sessions to their MX hosts.

    \b
    Example:
        websofttt tls-report show --day 2026-12-05 --json
    """


@tls_report_group.command("show")
@day_option
@json_option
@with_settings
@with_store
def tls_report_show(settings, store, day, as_json) -> None:
    """Each domain's report for the day, as it would be sent, and where its `_smtp._tls` record says to send it.

    \b
    Example:
        websofttt tls-report show --day 2026-12-05
    """
    day = _day(day)
    resolver = relay_dns.make_resolver(settings.dns)

    async def gather() -> list[dict[str, Any]]:
        rows = []
        for domain in tls_reports.domains(store, day):
            rua, failed = await tls_report.rua_or_why(resolver, domain)
            rows.append({"domain": domain, "rua": rua, "rua_error": failed or None,
                         "report": tls_reports.report(store, day, domain, settings.provider.domain,
                                                      f"mailto:postmaster@{settings.provider.domain}")})
        return rows
    emit(asyncio.run(gather()), as_json, _lines)


@tls_report_group.command("send")
@day_option
@json_option
@with_settings
@with_store
def tls_report_send(settings, store, day, as_json) -> None:
    """Send the day's reports that no node has sent yet (the delivery role sends yesterday's by itself, within
    an hour of midnight UTC). Reports to mailto: addresses are queued for the delivery role.

    \b
    Example:
        websofttt tls-report send --day 2026-12-05
    """
    done = asyncio.run(tls_report.send_day(settings, store, store.call, relay_dns.make_resolver(settings.dns), _day(day)))
    emit(done, as_json, lambda rows: [f"{r['domain']} {r['day']}: " + ", ".join(f"{s['to']} {s['result']}" for s in r["sent"])
                                      for r in rows] or ["nothing to send"])


def _lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for row in rows:
        where = ", ".join(row["rua"]) or row["rua_error"] or "(no _smtp._tls record: not sent)"
        lines.append(f"{row['domain']}  rua: {where}")
        for entry in row["report"]["policies"]:
            policy, summary = entry["policy"], entry["summary"]
            lines.append(f"  {policy['policy-type']:<16} {', '.join(policy['mx-host'])}: "
                         f"{summary['total-successful-session-count']} successful, "
                         f"{summary['total-failure-session-count']} failed")
            lines += [f"    {d['result-type']} {d['receiving-mx-hostname']} {d['receiving-ip']}: {d['failed-session-count']}"
                      for d in entry.get("failure-details", [])]
    return lines or ["no sessions counted that day"]


COMMANDS = [tls_report_group]

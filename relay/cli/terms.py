"""`websofttt terms …`: terms of service versions published with notice (policy/terms.py), and who was told.

Tenants are customers, not individuals: showing who was notified needs no reason (README, Operations).
"""
from __future__ import annotations

import click

from policy import terms, terms_notices
from policy.business_days import Calendar
from policy.settings import Settings
from relay.cli.common import emit, json_option, with_settings, with_store


def calendar(settings: Settings) -> Calendar:
    return Calendar(settings.provider.holiday_country, settings.provider.holiday_subdivision)


@click.group("terms")
def terms_group() -> None:
    """Terms of service: publish a new version with notice, see who accepted and who was told.

    \b
    Example:
        websofttt terms list
    """


@terms_group.command("publish")
@click.argument("version")
@click.option("--effective", required=True, type=click.DateTime(["%Y-%m-%d"]), metavar="YYYY-MM-DD",
              help="The day it takes effect (00:00 UTC), at least provider.terms_notice_business_days away.")
@click.option("--summary-file", required=True, type=click.File(encoding="utf-8"), help="What changes (plain text).")
@click.option("--url", default=None, help="Where the full text is published.")
@json_option
@with_settings
@with_store
def terms_publish(settings, store, version, effective, summary_file, url, as_json) -> None:
    """Publish VERSION, taking effect on --effective, and send every tenant with a contact address a notice.

    The date must be at least 30 business days away (provider.terms_notice_business_days; weekends and the
    public holidays of provider.holiday_country do not count). Until then the version in force stays in force;
    tenants that have not accepted VERSION are reminded provider.terms_reminder_business_days before.

    \b
    Example:
        websofttt terms publish 2027-03 --effective 2027-03-01 --summary-file changes.txt \\
            --url https://websofttt.com/terms/2027-03
    """
    p, today = settings.provider, terms.utc_today()
    terms.seed(store, p.terms_version)
    version = terms.publish(store, calendar(settings), p.terms_notice_business_days, version, effective.date(),
                            summary_file.read(), url, today)
    told = terms_notices.send(store, p, settings.node.name, terms.book(store, p.terms_version), version,
                              terms_notices.Kind.NOTICE, today)

    def lines(d: dict) -> list[str]:
        return ([f"published terms {d['version']}, in force from {d['effective']}",
                 f"notified {len(d['sent'])} tenant(s):"]
                + [f"  {n['tenant']} <{n['recipient']}> queued as {n['queue_id']}" for n in d["sent"]]
                + [f"not notified (no contact address): {', '.join(d['not_notified']) or 'none'}"])
    emit(version.as_json() | told, as_json, lines)


@terms_group.command("list")
@json_option
@with_settings
@with_store
def terms_list(settings, store, as_json) -> None:
    """Every version: published, effective, how many tenants accepted it and were notified.

    \b
    Example:
        websofttt terms list --json
    """
    current = terms.seed(store, settings.provider.terms_version)
    in_force = current.in_force(terms.utc_today())

    def lines(items: list[dict]) -> list[str]:
        return [f"{v['version']:<16} effective {v['effective']}{' (in force)' if v['version'] == in_force else ''}  "
                f"published {v['published']}  accepted by {v['accepted']}  notified {v['notified']}" for v in items]
    emit(terms.summary(store, settings.provider.terms_version), as_json, lines)


@terms_group.command("show")
@click.argument("version")
@json_option
@with_settings
@with_store
def terms_show(settings, store, version, as_json) -> None:
    """One version: its summary, the notices and reminders sent, who accepted it, who was not notified.

    \b
    Example:
        websofttt terms show 2027-03
    """
    shown = terms.seed(store, settings.provider.terms_version).get(version)

    def lines(d: dict) -> list[str]:
        return ([f"terms {d['version']}: published {d['published']}, in force from {d['effective']}",
                 *(["url: " + d["url"]] if d["url"] else []), "summary:", *("  " + s for s in d["summary"].splitlines()),
                 f"accepted by: {', '.join(d['accepted']) or 'none'}"]
                + [f"{n['kind']} to {n['tenant']} <{n['recipient']}> at {n['sent']}, queued as {n['queue_id']}"
                   for n in d["notices"]]
                + [f"not notified: {', '.join(d['not_notified']) or 'none'}"])
    emit(shown.as_json() | terms_notices.of_version(store, version), as_json, lines)


COMMANDS = [terms_group]

"""`websofttt shaping …`: the delivery shaping in force (policy/shaping_rules.py, policy/shaping.py), and
suspending or resuming a site by hand."""
from __future__ import annotations

import math
import time

import click

from policy import shaping, shaping_rules
from policy.values import Rate, parse_duration
from relay.cli.common import emit, json_option, with_settings, with_store


@click.group("shaping")
def shaping_group() -> None:
    """Delivery shaping: each site's limits, what automation changed, and suspending a site by hand.

    \b
    Example:
        websofttt shaping status
    """


@shaping_group.command("status")
@json_option
@with_settings
@with_store
def shaping_status(settings, store, as_json) -> None:
    """Every site the rules name (and any other with an action in force): its rate, the rate in force after
    automation's reductions, the copies let through in about the last minute (all nodes), and the actions
    in force with why and until when.

    \b
    Example:
        websofttt shaping status --json
    """
    rules = shaping_rules.load(settings.delivery.shaping_file)
    actions = shaping.active(store)
    names = [s.name for s in rules.sites] + sorted({a.site for a in actions} - {s.name for s in rules.sites})
    rows = []
    for name in names:
        limits = rules.limits(name)
        mine = [a for a in actions if a.site == name]
        rate = limits.max_message_rate
        factor = math.prod(a.factor for a in mine if a.kind == shaping.REDUCE)
        rows.append({"site": name, "rules": rules.source, "max_message_rate": _rate(rate),
                     "rate_in_force": _rate(Rate(max(1, int(rate.count * factor)), rate.period) if rate else None),
                     "sent_last_minute": shaping.sent_recently(store, name) if rate else None,
                     "suspended_until": _time(max((a.until for a in mine if a.kind == shaping.SUSPEND and not a.source),
                                                  default=0)),
                     "actions": [{"kind": a.kind, "factor": a.factor, "until": _time(a.until), "rule": a.rule,
                                  "reason": a.reason, "source": a.source or None} for a in mine]})
    emit(rows, as_json, _lines)


@shaping_group.command("suspend")
@click.argument("site")
@click.option("--for", "duration", required=True, help="How long, a duration such as 30m, 1h, 2d.")
@click.option("--source", default="", metavar="NAME", help="Only copies from this egress source ([egress.sources.NAME]).")
@click.option("--reason", default="suspended by hand", show_default=True, help="Shown by shaping status.")
@with_settings
@with_store
def shaping_suspend(settings, store, site, duration, source, reason) -> None:
    """Hold SITE's copies (they wait without using up attempts) for a while, on every node; with --source,
    only the copies leaving from that egress source (the pool's other sources go on).

    \b
    Example:
        websofttt shaping suspend gmail --for 1h --source mta2 --reason "mta2 listed at Spamhaus"
    """
    if source and source not in settings.egress.sources:
        raise click.BadParameter(f"no [egress.sources.{source}] is configured", param_hint="--source")
    try:
        seconds = parse_duration(duration)
    except ValueError as e:
        raise click.BadParameter(f"{e}, got {duration!r}", param_hint="--for") from None
    until = time.time() + seconds
    shaping.act(store, site, shaping.SUSPEND, 1.0, until, reason, shaping.OPERATOR, source)
    click.echo(f"site {site} suspended{f' for source {source}' if source else ''} until {_time(until)} on every node")


@shaping_group.command("resume")
@click.argument("site")
@with_settings
@with_store
def shaping_resume(settings, store, site) -> None:
    """End every action on SITE (suspensions and reductions, by automation or by hand), on every node.

    \b
    Example:
        websofttt shaping resume gmail
    """
    ended = shaping.resume(store, site)
    click.echo(f"site {site}: {ended} action(s) ended" if ended else f"site {site}: no action in force")


def _rate(rate: Rate | None) -> str | None:
    return f"{rate.count}/{rate.period:g}s" if rate else None


def _time(epoch: float) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)) if epoch else None


def _lines(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        rate = f"rate {r['rate_in_force']} (of {r['max_message_rate']}), {r['sent_last_minute']} sent in the last minute" \
            if r["max_message_rate"] else "no rate limit"
        out.append(f"{r['site']:<16} {rate}" + (f"; SUSPENDED until {r['suspended_until']}" if r["suspended_until"] else ""))
        out.extend(f"    {a['kind']}{' x' + format(a['factor'], 'g') if a['kind'] == shaping.REDUCE else ''}"
                   f"{' source ' + a['source'] if a['source'] else ''} until {a['until']} ({a['rule']}): {a['reason']}"
                   for a in r["actions"])
    return out or ["no site is named by the rules and no action is in force"]


COMMANDS = [shaping_group]

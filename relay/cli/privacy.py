"""`websofttt stats` (aggregates only) and `websofttt privacy export|erase ADDRESS` (subject access, erasure).

Part of the composition root (it may import every role): a person's records live in the shared store and in this
node's spool and inbound mailbox, so these commands read all three. On several nodes, run the privacy
commands on each (the store part is shared; the second run finds it done).
"""
from __future__ import annotations

import click

from inbound import mailbox
from policy import audit, privacy, stats
from policy.addresses import mask, normalise
from policy.store import Store
from relay import spool_files
from relay.cli.common import command_store, emit, json_option, reason_option, with_settings, with_store


@click.command("stats")
@click.option("--days", default=30, show_default=True, type=click.IntRange(1, 3660), help="Days to cover.")
@json_option
@with_settings
@with_store
def stats_cmd(settings, store, days, as_json) -> None:
    """Per tenant and day: received, delivered, bounced, complaints, unsubscribes (aggregates only).

    No addresses; a count below privacy.stats_min_count (k, default 5) is shown as "<k" (null in JSON).
    Needs no reason: nothing in it is about one person.

    \b
    Example:
        websofttt stats --days 7 --json
    """
    k = settings.privacy.stats_min_count
    rows = stats.daily(store, days, k)

    def lines(items: list[dict]) -> list[str]:
        head = f"{'day':<10}  {'tenant':<20} " + " ".join(f"{f:>12}" for f in stats.FIELDS)
        return [head] + [f"{r['day']:<10}  {r['tenant']:<20} " + " ".join(
            f"{(f'<{k}' if r[f] is None else r[f]):>12}" for f in stats.FIELDS) for r in items]
    emit(rows, as_json, lines)


@click.group("privacy")
def privacy_group() -> None:
    """Subject access and erasure for one address (the opt-out itself stays).

    \b
    Example:
        websofttt privacy export jane@example.net --reason "subject access request P-20261125-4KD2QX"
    """


def _address(value: str) -> str:
    address = normalise(value)
    if "@" not in address:
        raise click.BadParameter(f"{value!r} is not an email address", param_hint="ADDRESS")
    return address


def _audited(settings, value: str, command: str, reason: str) -> tuple[str, Store]:
    """The checked ADDRESS and the store, this access audited. The store is opened once ADDRESS is checked:
    a bad one exits 2 before anything is opened or created."""
    address = _address(value)
    store = command_store(settings)
    audit.record(store, command, mask(address), reason)
    return address, store


@privacy_group.command("export")
@click.argument("address")
@reason_option
@with_settings
def privacy_export(settings, address, reason) -> None:
    """Print, as JSON, every record about ADDRESS: store, this node's queue and inbound mailbox (audited).

    \b
    Example:
        websofttt privacy export jane@example.net --reason "subject access request P-20261125-4KD2QX"
    """
    address, store = _audited(settings, address, "privacy export", reason)
    records = privacy.export(store, address) | {
        "queue": spool_files.address_records(settings.spool_dir, address),
        "inbound": mailbox.records_from(settings.mailbox_path, address)}
    emit({"address": address, "node": settings.node.name, "records": records}, True, list)


@privacy_group.command("erase")
@click.argument("address")
@reason_option
@json_option
@with_settings
def privacy_erase(settings, address, reason, as_json) -> None:
    """Remove every record about ADDRESS except its suppressions, which keep honouring the opt-out (audited).

    Complaints and bounces keep their count without the address, so tenants' rates do not change. Mail
    still queued for ADDRESS on this node is not delivered.

    \b
    Example:
        websofttt privacy erase jane@example.net --reason "erasure request P-20261125-4KD2QX"
    """
    address, store = _audited(settings, address, "privacy erase", reason)
    counts = privacy.erase(store, address) | {
        "queue": spool_files.erase_address(settings.spool_dir, address),
        "inbound": mailbox.erase_from(settings.mailbox_path, address)}
    kept = len(privacy.export(store, address)["suppressions"])
    emit({"erased": counts, "suppressions_kept": kept}, as_json,
         lambda d: [f"{table}: {n}" for table, n in d["erased"].items()]
         + [f"suppressions kept (the opt-out stays): {d['suppressions_kept']}"])


COMMANDS = [stats_cmd, privacy_group]

"""`websofttt stats` (aggregates only), `websofttt privacy export|erase ADDRESS` (subject access, erasure) and
`websofttt privacy hold|release` (legal holds, which keep records from the purge and from erasure).

Part of the composition root (it may import every role): a person's records live in the shared store and in this
node's spool and inbound mailbox, so these commands read all three. On several nodes, run the privacy
commands on each (the store part is shared; the second run finds it done).
"""
from __future__ import annotations

import click

from inbound import mailbox
from policy import audit, holds, privacy, stats
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
    """Subject access and erasure for one address (the opt-out itself stays); legal holds.

    \b
    Example:
        websofttt privacy export jane@example.net --reason "subject access request P-20261125-4KD2QX"
        websofttt privacy hold --tenant acme --reason "court order 2026/118" --until 2027-06-30
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
    still queued for ADDRESS on this node is not delivered. Refused (exit 1), erasing nothing, while a legal
    hold stands on ADDRESS or on a tenant that has records about it.

    \b
    Example:
        websofttt privacy erase jane@example.net --reason "erasure request P-20261125-4KD2QX"
    """
    address, store = _audited(settings, address, "privacy erase", reason)
    _refuse_if_held(store, address)
    counts = privacy.erase(store, address) | {
        "queue": spool_files.erase_address(settings.spool_dir, address),
        "inbound": mailbox.erase_from(settings.mailbox_path, address)}
    kept = len(privacy.export(store, address)["suppressions"])
    emit({"erased": counts, "suppressions_kept": kept}, as_json,
         lambda d: [f"{table}: {n}" for table, n in d["erased"].items()]
         + [f"suppressions kept (the opt-out stays): {d['suppressions_kept']}"])


def _refuse_if_held(store: Store, address: str) -> None:
    """Erasure waits for the holds that keep ADDRESS's records: on the address, or on a tenant whose records
    name it (erasing would remove the address from the tenant's held records)."""
    named_by = sorted({row["tenant"] for rows in privacy.export(store, address).values() for row in rows
                       if row.get("tenant")})
    found = holds.covering(store, address=address) + [h for t in named_by for h in holds.covering(store, tenant=t)]
    if found:
        raise click.ClickException(
            f"{address} is under legal hold: {holds.listed(found)}"
            + ". Nothing was erased; once the hold ends (websofttt privacy release HOLD_ID --reason R), erase again")


class _PlaceByDefault(click.Group):
    """`privacy hold ADDRESS|--tenant ID ...` is `privacy hold place ...`: any first argument that is not a
    subcommand or --help begins a hold, so the common case needs no extra word."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["place", *args]
        return super().parse_args(ctx, args)


@privacy_group.group("hold", cls=_PlaceByDefault)
def hold_group() -> None:
    """Place a legal hold on an address or a tenant (the default), or list the holds.

    While a hold stands, the retention purge keeps the records it covers (audited) and `privacy erase`
    refuses. It stands until `privacy release`, or to the end of --until (UTC).

    \b
    Example:
        websofttt privacy hold jane@example.net --reason "summons 2026-0412" --until 2027-06-30
        websofttt privacy hold --tenant acme --reason "court order 2026/118"
        websofttt privacy hold list --json
    """


def _line(hold: holds.Hold) -> str:
    """One hold on one line: id, what it holds, whether it stands, why."""
    if hold.released:
        state = f"released {hold.released}"
    else:
        state = ("standing" if hold.stands() else "ended") + (f" until {hold.until}" if hold.until else "")
    return f"hold {hold.id} on {hold.subject}: {state}; reason: {hold.reason}"


@hold_group.command("place")
@click.argument("address", required=False)
@click.option("--tenant", "tenant_id", default=None, help="Hold this tenant's records instead of one address's.")
@click.option("--reason", required=True, help="The summons or order the hold answers (audit-logged).")
@click.option("--until", default=None, metavar="YYYY-MM-DD", help="Last day (UTC) it stands [default: until released].")
@with_settings
def hold_place(settings, address, tenant_id, reason, until) -> None:
    """Hold the records of ADDRESS (sent copies, events, bounces) or of --tenant ID (also its hourly counts).

    \b
    Example:
        websofttt privacy hold jane@example.net --reason "summons 2026-0412" --until 2027-06-30
    """
    if (address is None) == (tenant_id is None):
        raise click.UsageError("give ADDRESS or --tenant ID (one, not both)")
    address = address and _address(address)
    hold = holds.place(command_store(settings), reason, address=address, tenant=tenant_id, until=until)
    click.echo(_line(hold))


@hold_group.command("list")
@json_option
@with_settings
@with_store
def hold_list(settings, store, as_json) -> None:
    """Every hold, released ones included: id, what it holds (an address masked), state, reason.

    \b
    Example:
        websofttt privacy hold list --json
    """
    found = holds.all_holds(store)
    emit([h.as_json() | {"address": h.address and mask(h.address)} for h in found], as_json,
         lambda _: [_line(h) for h in found])


@privacy_group.command("release")
@click.argument("hold_id", metavar="HOLD_ID", type=int)
@click.option("--reason", required=True, help="Why the hold ends (audit-logged).")
@with_settings
@with_store
def privacy_release(settings, store, hold_id, reason) -> None:
    """End legal hold HOLD_ID: the next retention purge removes what only it kept.

    \b
    Example:
        websofttt privacy release 3 --reason "case 2026/118 closed"
    """
    hold = holds.release(store, hold_id, reason)
    click.echo(_line(hold))


COMMANDS = [stats_cmd, privacy_group]

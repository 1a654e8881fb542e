"""`websofttt queue …`: this node's queue (its spool), read and changed from the command line.

Message details are individual records: shown only with --reason, audit-logged first.
"""
from __future__ import annotations

import click

from policy import audit, events
from relay.cli.common import emit, json_option, reason_option, with_settings, with_store
from relay.spool_files import drop, message_detail, queue_summary, retry_now


@click.group()
def queue() -> None:
    """This node's queue.

    \b
    Example:
        websofttt queue list
    """


@queue.command("list")
@json_option
@with_settings
def queue_list(settings, as_json) -> None:
    """Queued messages, oldest first: id, tenant, size and recipient counts by state (no addresses).

    \b
    Example:
        websofttt queue list
    """
    emit(queue_summary(settings.spool_dir), as_json,
         lambda rows: [f"{r['id']:<40} {r['tenant']:<20} {r['received']} {r['size']:>9} "
                       + " ".join(f"{k}={v}" for k, v in sorted(r["states"].items())) for r in rows]
         or ["queue is empty"])


@queue.command("show")
@click.argument("queue_id")
@reason_option
@json_option
@with_settings
@with_store
def queue_show(settings, store, queue_id, reason, as_json) -> None:
    """One message with its envelope and recipients (--reason required, audit-logged).

    \b
    Example:
        websofttt queue show 01abc.node1 --reason "ticket 4712: delivery delay"
    """
    audit.record(store, "queue show", queue_id, reason)
    detail = message_detail(settings.spool_dir, queue_id)
    if detail is None:
        raise click.UsageError(f"no message {queue_id} in this node's queue")
    detail["events"] = events.of_message(store, queue_id)
    emit(detail, as_json, lambda d: [f"id: {d['id']}", f"tenant: {d['tenant']}", f"from: {d['mail_from']}",
                                     f"received: {d['received']}", f"size: {d['size']}"]
         + [f"  {r['recipient']}  {r['state']}  attempts={r['attempts']}  {r['last_reply'] or ''}"
            for r in d["recipients"]]
         + [f"  {e['time']} {e['kind']:<10} {e['recipient']}  {e['detail']}" for e in d["events"]])


@queue.command("retry")
@click.argument("queue_id", required=False)
@click.option("--all", "all_", is_flag=True, help="Every deferred recipient of this node.")
@with_settings
def queue_retry(settings, queue_id, all_) -> None:
    """Try deferred recipients now instead of at their next scheduled attempt.

    \b
    Example:
        websofttt queue retry --all
    """
    if bool(queue_id) == all_:
        raise click.UsageError("give either QUEUE_ID or --all")
    click.echo(f"{retry_now(settings.spool_dir, queue_id)} recipient(s) due now")


@queue.command("drop")
@click.argument("queue_id")
@with_settings
def queue_drop(settings, queue_id) -> None:
    """Stop delivering a message: pending recipients become 'dropped', the body is erased.

    \b
    Example:
        websofttt queue drop 06h4kehqevd6smsl6c.node1
    """
    count = drop(settings.spool_dir, queue_id)
    if count < 0:
        raise click.UsageError(f"no message {queue_id} in this node's queue")
    click.echo(f"dropped {queue_id} ({count} pending recipient(s))")


COMMANDS = [queue]

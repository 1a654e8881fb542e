"""`websofttt inbound …`: the inbound side, offline: what the listener would conclude about a saved message, and
the messages whose processing failed MAX_FAILURES times and were set aside."""
from __future__ import annotations

from pathlib import Path

import click

from inbound import mailbox
from policy.tokens import TokenKeys
from relay.cli.common import emit, json_option, with_settings, with_store


@click.group("inbound")
def inbound_group() -> None:
    """The inbound side (what comes back to the role addresses).

    \b
    Example:
        websofttt inbound classify saved-reply.eml
    """


@inbound_group.command("classify")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@json_option
@with_settings
@with_store
def inbound_classify(settings, store, files, as_json) -> None:
    """What the inbound listener would conclude about each FILE (a raw message); nothing is changed.

    \b
    Example:
        websofttt inbound classify reply.eml bounce.eml --json
    """
    keys = TokenKeys.load(store, settings.tokens.secret_file)
    from inbound import offline as inbound_offline
    rows = [inbound_offline.describe(Path(f).read_bytes(), settings.provider, store, keys, f) for f in files]
    emit(rows, as_json, lambda items: [f"{r['file']}: {r['kind']} ({r['evidence']})"
                                       + (f" tenant={r['tenant']}" if r["tenant"] else "") for r in items])


@inbound_group.command("aside")
@json_option
@with_settings
def inbound_aside(settings, as_json) -> None:
    """Messages received on this node whose processing failed three times and is no longer retried at each
    start (id, received, kind if it was classified, failures, the last error).

    \b
    Example:
        websofttt inbound aside --json
    """
    rows = mailbox.set_aside(settings.mailbox_path)
    emit(rows, as_json, lambda items: [f"{r['id']}  {r['received']}  failures={r['failures']}  {r['error']}"
                                       for r in items] or ["no message set aside"])


@inbound_group.command("retry")
@click.argument("inbound_id")
@with_settings
def inbound_retry(settings, inbound_id) -> None:
    """Give a message set aside its attempts back: the next start of the inbound role processes it again.

    \b
    Example:
        websofttt inbound retry 3f2a9c0d1e4b5a6c7d
    """
    if not mailbox.retry(settings.mailbox_path, inbound_id):
        raise click.BadParameter(f"no unprocessed message {inbound_id} on this node", param_hint="INBOUND_ID")
    click.echo(f"{inbound_id} will be processed at the next start of the inbound role")


COMMANDS = [inbound_group]

"""`websofttt inbound …`: the inbound side, offline (what the listener would conclude about a saved message)."""
from __future__ import annotations

from pathlib import Path

import click

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


COMMANDS = [inbound_group]

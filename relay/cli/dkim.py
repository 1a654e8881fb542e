"""`websofttt dkim …`: the DNS records to publish, tenants' own keys, and rotating the provider's key."""
from __future__ import annotations

import hashlib
import time

import click

from policy import dkimkeys, tenants
from policy.keys import dkim_dns_record, load_private_key
from policy.settings import Settings
from policy.store import Store, epoch
from relay.cli.common import command_store, with_settings, with_store
from relay.signing import provider_keys


@click.group()
def dkim() -> None:
    """DKIM keys and the DNS records to publish.

    \b
    Example:
        websofttt dkim dns
    """


def dkim_zone(settings: Settings, store: Store) -> list[str]:
    """The provider's DKIM records: the key that signs, keys that will (publish them now), keys just replaced."""
    domain, now = settings.provider.domain, time.time()
    schedule = [(settings.dkim.selector, load_private_key(settings.dkim_key), "")] \
        if settings.dkim.key_file or settings.dkim_key.exists() else []              # (selector, key, active_from)
    if settings.dkim.key_file is None:
        schedule += [(k.selector, k.key(), k.active_from) for k in dkimkeys.provider_rotations(store)]
    signing = max((i for i, (_, _, start) in enumerate(schedule) if epoch(start) <= now), default=0)
    lines = []
    for i, (selector, key, start) in enumerate(schedule):
        if i < signing:
            until = epoch(schedule[i + 1][2]) + dkimkeys.RETIRED_KEEP
            if until < now:
                continue
            lines.append(f"; replaced; keep published until {_iso(until)} for mail signed before")
        elif i > signing:
            lines.append(f"; signs from {start} (dkim rotate): publish now")
        lines.append(dkim_dns_record(selector, domain, key))
    lines += [dkim_dns_record(k.selector, k.domain, k.key) for k in provider_keys(settings, store)[1:]]    # Ed25519
    lines += [dkim_dns_record(dkimkeys.hosted_selector(k), domain, k.key()) for k in dkimkeys.all_keys(store)]
    return lines


def provider_zone(settings: Settings, store: Store) -> list[str]:
    """Every record the provider publishes: DKIM, MX for the inbound listener, SPF and DMARC suggestions."""
    p = settings.provider
    return [*dkim_zone(settings, store),
            "; the inbound listener receives the role addresses (abuse, privacy, unsubscribe) and the bounces",
            f"{p.domain}. IN MX 10 {p.hostname}.",
            f"{p.bounce_domain}. IN MX 10 {p.hostname}.",
            "; SPF (suggested): copies leave with the bounce domain as envelope sender, from this host",
            f'{p.bounce_domain}. IN TXT "v=spf1 a:{p.hostname} -all"',
            "; DMARC (suggested): start with p=none and reports, then quarantine once aligned",
            f'_dmarc.{p.domain}. IN TXT "v=DMARC1; p=none; adkim=r; aspf=r; rua=mailto:postmaster@{p.domain}"',
            *inbound_transport_zone(settings)]


def inbound_transport_zone(settings: Settings) -> list[str]:
    """MTA-STS and TLS-RPT for the domains the inbound listener receives (RFC 8461, RFC 8460): senders then use
    TLS to it and report how that went. The policy starts in testing mode; its id changes with its text."""
    p = settings.provider
    policy = ["version: STSv1", "mode: testing", f"mx: {p.hostname}", "max_age: 604800"]
    policy_id = hashlib.sha256("\n".join(policy).encode()).hexdigest()[:20]
    return ["; MTA-STS (suggested; enforce once TLS-RPT shows no failures): the TXT records, and the policy to serve",
            f"; at https://mta-sts.{p.domain}/.well-known/mta-sts.txt and https://mta-sts.{p.bounce_domain}/... as text/plain:",
            *[f";   {line}" for line in policy],
            *[f'_mta-sts.{domain}. IN TXT "v=STSv1; id={policy_id}"' for domain in (p.domain, p.bounce_domain)],
            "; TLS-RPT: where sending servers report on their TLS to the inbound listener",
            *[f'_smtp._tls.{domain}. IN TXT "v=TLSRPTv1; rua=mailto:postmaster@{p.domain}"'
              for domain in (p.domain, p.bounce_domain)]]


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


@dkim.command("dns")
@click.option("--tenant", "tenant_id", default=None, help="The records this tenant publishes for its own domains.")
@with_settings
@with_store
def dkim_dns(settings, store, tenant_id) -> None:
    """Print the DNS records to publish, in zone-file syntax; with --tenant, what a tenant publishes.

    The provider's: each DKIM selector in use (the signing key, a rotated key waiting to sign, a
    replaced key still needed), the provider-hosted selectors tenants may CNAME to, MX for the inbound
    listener, SPF and DMARC suggestions, and MTA-STS (with its policy) and TLS-RPT for the inbound domains.

    \b
    Example:
        websofttt dkim dns >> websofttt.com.zone
        websofttt dkim dns --tenant acme
    """
    if tenant_id:
        tenants.require(store, tenant_id)
        lines = tenant_dns_lines(settings, dkimkeys.all_keys(store, tenant_id))
    else:
        lines = provider_zone(settings, store)
    for line in lines:
        click.echo(line)


def tenant_dns_lines(settings, keys: list[dkimkeys.TenantKey]) -> list[str]:
    """The TXT record for each of the tenant's domains, and the CNAME that may replace it."""
    lines = []
    for key in keys:
        lines.append(dkim_dns_record(key.selector, key.domain, key.key()))
        lines.append(f"; or, to let the provider rotate the key: {key.selector}._domainkey.{key.domain}. IN CNAME "
                     f"{dkimkeys.hosted_selector(key)}._domainkey.{settings.provider.domain}.")
    return lines


@dkim.command("add-domain")
@click.argument("tenant_id")
@click.argument("domain")
@with_settings
@with_store
def dkim_add_domain(settings, store, tenant_id, domain) -> None:
    """Give one of a tenant's From domains its own DKIM key, so its mail is DMARC-aligned.

    Prints the records the tenant publishes; copies From DOMAIN are then signed twice:
    d=DOMAIN (aligned) and d= the provider domain.

    \b
    Example:
        websofttt dkim add-domain acme acme.example
    """
    key = dkimkeys.add_domain(store, tenant_id, domain, settings.dkim.selector)
    for line in tenant_dns_lines(settings, [key]):
        click.echo(line)


@dkim.command("rotate")
@click.option("--selector", default=None, help="The new key's selector (default: s + today's date).")
@with_settings
def dkim_rotate(settings, selector) -> None:
    """Make a new provider RSA key; it signs once `dkim.rotation_delay` has passed, so DNS can catch up.

    Publish the printed record at once. Running nodes switch by themselves within a minute of the
    time printed; `dkim dns` lists the replaced key for a week more.

    \b
    Example:
        websofttt dkim rotate
    """
    if settings.dkim.key_file is not None:
        raise click.UsageError("[dkim] key_file is set, so that file signs: rotate by replacing it on every node "
                               "and `systemctl reload`, or remove key_file to let the store rotate keys")
    selector = selector or time.strftime("s%Y%m%d", time.gmtime())
    if selector in (settings.dkim.selector, settings.dkim.ed25519_selector):
        raise click.BadParameter(f"{selector!r} is a configured selector", param_hint="--selector")
    key = dkimkeys.rotate(command_store(settings), selector, settings.dkim.rotation_delay)
    click.echo(f"; signs from {key.active_from}: publish now")
    click.echo(dkim_dns_record(key.selector, settings.provider.domain, key.key()))


COMMANDS = [dkim]

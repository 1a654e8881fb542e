"""Configuration: one TOML file, loaded once into frozen dataclasses and validated at start-up.

Every error names the file, the key and what is expected, so that an operator's typo is an
exit-2 message and never a traceback or a surprise at the first message.
"""
from __future__ import annotations

import os
import re
import socket
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from policy import business_days, config_keys, egress, shaping_rules
from policy.config_keys import key
# Listen, Rate and the parsers are re-exported: callers import them from here
from policy.values import (Listen, Rate, parse_address, parse_bool, parse_count, parse_country, parse_dir, parse_domain,
                           parse_duration, parse_fraction, parse_listen_list, parse_mode, parse_node_name,
                           parse_nameservers, parse_optional_listen, parse_port, parse_rate, parse_routes, parse_schedule,
                           parse_selector, parse_store_url,
                           parse_str, parse_url, parse_workers)

DEFAULT_CONFIG_NAME = "websofttt.toml"
ROLES = ("submission", "delivery", "inbound", "http")     # what `serve --only` may name
ENV_CONFIG = "WEBSOFTTT_CONFIG"
MIN_NOTICE_BUSINESS_DAYS = 30       # "at least thirty (30) business days prior to the change taking effect"


class ConfigError(Exception):
    """A configuration problem; the message names the file and key."""


@dataclass(frozen=True)
class Provider:
    domain: str = key(parse_domain, "websofttt.com")
    bounce_domain: str = key(parse_domain, "bounces.websofttt.com")
    hostname: str = key(parse_domain, "relay.websofttt.com")
    abuse_address: str = key(parse_address, "4abuse@websofttt.com")
    privacy_address: str = key(parse_address, "4privacy@websofttt.com")
    terms_version: str = key(parse_str, "2026-01")               # the first terms version (later ones: `websofttt terms publish`)
    holiday_country: str = key(parse_country, "US")               # public holidays that are not business days (notice periods)
    holiday_subdivision: str = key(parse_str, "")                 # a state or region of holiday_country ("" : national only)
    terms_notice_business_days: int = key(parse_count, 30)        # notice before new terms take effect (never below 30)
    terms_reminder_business_days: int = key(parse_count, 5)       # a reminder this many business days before

    @property
    def domains(self) -> frozenset[str]:
        """Domains that identify the provider: mail may come From them, tenants may not forge them."""
        return frozenset({self.domain, self.bounce_domain})


@dataclass(frozen=True)
class Node:
    name: str = key(parse_node_name, "")
    workers: int = key(parse_workers, 0)


@dataclass(frozen=True)
class Paths:
    data_dir: Path = key(parse_dir, Path("./var"), path=True)


@dataclass(frozen=True)
class Store:
    url: str = key(parse_store_url, "")
    acquire_timeout: float = key(parse_duration, 2.0)  # seconds a command waits for a PostgreSQL connection before 451 4.3.0


@dataclass(frozen=True)
class Submission:
    listen: tuple[Listen, ...] = key(parse_listen_list, (("127.0.0.1", 8587),))
    tls_listen: tuple[Listen, ...] = key(parse_listen_list, ())
    max_message_size: int = key(parse_count, 26214400)
    max_recipients: int = key(parse_count, 100)
    auth_failures: int = key(parse_count, 5)                 # failed AUTHs per username or client IP ...
    auth_failure_window: float = key(parse_duration, 600.0)  # ... within this window lock both out (454 4.7.0)
    auth_cache_ttl: float = key(parse_duration, 3600.0)      # a worker skips scrypt for a login it verified this recently; 0: off
    auth_cache_size: int = key(parse_count, 10000)           # logins each worker keeps verified (oldest dropped first)
    timeout: float = key(parse_duration, 300.0)              # idle seconds before the server closes a session
    trust_cache_ttl: float = key(parse_duration, 5.0)        # seconds a worker trusts what it read of a tenant (networks, status)
    shutdown_grace: float = key(parse_duration, 30.0)        # on SIGTERM, how long open transactions may take to finish
    proxy_protocol: bool = key(parse_bool, False)            # `listen` addresses expect a PROXY header (v1/v2) first


@dataclass(frozen=True)
class Inbound:
    listen: tuple[Listen, ...] = key(parse_listen_list, (("127.0.0.1", 8025),))
    max_message_size: int = key(parse_count, 10485760)  # replies, bounces and complaints are small; 10 MiB is generous
    max_recipients: int = key(parse_count, 20)
    max_connections_per_ip: int = key(parse_count, 20)  # per node, divided among the workers
    timeout: float = key(parse_duration, 120.0)         # idle seconds before a session is closed
    retention: float = key(parse_duration, 30 * 86400)  # raw inbound messages are kept this long (evidence), then deleted
    proxy_protocol: bool = key(parse_bool, False)       # every connection starts with a PROXY header (v1/v2)


@dataclass(frozen=True)
class Http:
    listen: tuple[Listen, ...] = key(parse_listen_list, (("127.0.0.1", 8080),))
    public_url: str = key(parse_url, "http://127.0.0.1:8080")
    api_rate: Rate = key(parse_rate, Rate(600, 60))            # requests per API key (relay/api), then 429


@dataclass(frozen=True)
class Tls:
    cert_file: Path | None = key(parse_str, None, path=True)
    key_file: Path | None = key(parse_str, None, path=True)


@dataclass(frozen=True)
class Dkim:
    selector: str = key(parse_selector, "s1")
    key_file: Path | None = key(parse_str, None, path=True)
    ed25519_selector: str = key(parse_selector, "e1")  # selector of the optional second, Ed25519 signature (RFC 8463)
    # empty: no Ed25519 signature; `init` creates the file if missing
    ed25519_key_file: Path | None = key(parse_str, None, path=True)
    rotation_delay: float = key(parse_duration, 48 * 3600)  # `dkim rotate`: the new key signs once DNS had this long


@dataclass(frozen=True)
class Tokens:
    secret_file: Path | None = key(parse_str, None, path=True)


@dataclass(frozen=True)
class Delivery:
    mode: str = key(parse_mode, "mx")
    smarthost: Listen | None = key(parse_optional_listen, None)
    # require STARTTLS with a verified certificate to the smarthost
    smarthost_tls: bool = key(parse_bool, False)
    smarthost_ca_file: Path | None = key(parse_str, None, path=True)  # CA bundle for that check (empty: the system's)
    smarthost_username: str = key(parse_str, "")                      # AUTH to the smarthost (over TLS only)
    smarthost_password_file: Path | None = key(parse_str, None, path=True)
    routes: dict[str, Listen] = key(parse_routes, factory=dict)
    retry_schedule: tuple[float, ...] = key(parse_schedule, (60, 300, 900, 1800, 3600, 7200, 14400))
    max_queue_lifetime: float = key(parse_duration, 5 * 86400)
    sent_retention: float = key(parse_duration, 180 * 86400)          # how long a token still maps to its tenant and recipient
    concurrency: int = key(parse_count, 100)                          # outbound connections in all, per worker
    per_destination: int = key(parse_count, 10)                       # outbound connections to one host:port, per worker
    messages_per_connection: int = key(parse_count, 100)              # then the connection is closed and a new one opened
    connect_timeout: float = key(parse_duration, 30.0)
    command_timeout: float = key(parse_duration, 300.0)               # RFC 5321 4.5.3.2: 5 minutes for greeting, MAIL, RCPT
    data_timeout: float = key(parse_duration, 600.0)                  # RFC 5321 4.5.3.2: 10 minutes for the end of DATA
    shaping_file: Path | None = key(parse_str, None, path=True)       # per-site limits and automation; empty: shipped
    mx_port: int = key(parse_port, 25)                                # the port of MX hosts
    tls_ca_file: Path | None = key(parse_str, None, path=True)        # CAs for MX certificates and MTA-STS hosts; empty: system's
    mta_sts: bool = key(parse_bool, True)                             # apply recipient domains' MTA-STS policies (RFC 8461)
    mta_sts_https_port: int = key(parse_port, 443)                    # where policies are fetched from
    https_private_hosts: bool = key(parse_bool, False)                # MTA-STS and TLS-RPT hosts may be private/loopback
    dane: bool = key(parse_bool, True)                                # DANE TLSA (RFC 7672), with dns.dnssec only
    tls_report: bool = key(parse_bool, True)                          # TLS-RPT (RFC 8460): count sessions, send daily reports


@dataclass(frozen=True)
class Dns:
    nameservers: tuple[Listen, ...] = key(parse_nameservers, ())      # every lookup goes to these; empty: the system's
    dnssec: bool = key(parse_bool, False)                             # trust their AD bit (a validating resolver)


@dataclass(frozen=True)
class Policy:
    complaint_rate: float = key(parse_fraction, 0.003)
    complaint_window: float = key(parse_duration, 7 * 86400)
    complaint_min_volume: int = key(parse_count, 1000)
    bounce_rate: float = key(parse_fraction, 0.10)
    ack_interval: float = key(parse_duration, 86400)
    tenant_rate: Rate = key(parse_rate, Rate(10000, 3600))
    soft_bounce_limit: int = key(parse_count, 5)                      # soft bounces of one recipient ...
    soft_bounce_window: float = key(parse_duration, 14 * 86400)       # ... within this window, with no delivery in between ...
    soft_bounce_suppression: float = key(parse_duration, 30 * 86400)  # ... suppress it for the tenant this long


@dataclass(frozen=True)
class Privacy:
    mask_recipients: bool = key(parse_bool, True)               # logs show j***@example.net instead of the address
    stats_min_count: int = key(parse_count, 5)                  # `stats` cells below this are suppressed (k-anonymity)
    events_retention: float = key(parse_duration, 400 * 86400)  # events, bounce records and hourly counts are purged after this


@dataclass(frozen=True)
class Webhooks:
    allow_private_targets: bool = key(parse_bool, False)   # http:// and private, loopback, link-local targets (tests)
    timeout: float = key(parse_duration, 10.0)              # seconds a receiver has to answer one event
    retry_first: float = key(parse_duration, 5.0)           # the first retry's delay; each next one doubles, up to 1 h


@dataclass(frozen=True)
class Egress:
    sources: dict[str, egress.Source] = key(egress.parse_sources, factory=dict)   # [egress.sources.NAME]
    pools: dict[str, egress.Pool] = key(egress.parse_pools, factory=dict)         # [egress.pools.NAME]

    def pool(self, name: str | None) -> egress.Pool:
        return self.pools.get(name or egress.DEFAULT) or egress.DEFAULT_POOL

    def source(self, name: str) -> egress.Source:
        return self.sources.get(name) or egress.DEFAULT_SOURCE


@dataclass(frozen=True)
class Settings:
    provider: Provider = Provider()
    node: Node = Node()
    paths: Paths = Paths()
    store: Store = Store()
    submission: Submission = Submission()
    inbound: Inbound = Inbound()
    http: Http = Http()
    tls: Tls = Tls()
    dkim: Dkim = Dkim()
    tokens: Tokens = Tokens()
    delivery: Delivery = Delivery()
    dns: Dns = Dns()
    policy: Policy = Policy()
    privacy: Privacy = Privacy()
    webhooks: Webhooks = Webhooks()
    egress: Egress = Egress()
    source: str = "<defaults>"

    @property
    def data_dir(self) -> Path:
        return self.paths.data_dir

    @property
    def store_path(self) -> Path:
        return self.data_dir / "websofttt.sqlite"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool" / self.node.name

    @property
    def mailbox_path(self) -> Path:
        """This node's inbound mailbox (inbound/mailbox.py)."""
        return self.data_dir / "inbound" / f"{self.node.name}.sqlite"

    @property
    def tls_cert(self) -> Path:
        return self.tls.cert_file or self.data_dir / "tls" / "cert.pem"

    @property
    def tls_key(self) -> Path:
        return self.tls.key_file or self.data_dir / "tls" / "key.pem"

    @property
    def self_signed(self) -> bool:
        """True when the certificate is the one `init` generates (no operator certificate given)."""
        return self.tls.cert_file is None

    @property
    def dkim_key(self) -> Path:
        return self.dkim.key_file or self.data_dir / "dkim" / f"{self.dkim.selector}.pem"


# Derived from the fields above (policy/config_keys.py); the example configuration documents the same keys
_SECTION_CLASSES = config_keys.sections(Settings)       # section -> its dataclass
_SCHEMA = config_keys.schema(_SECTION_CLASSES)          # section -> key -> parser
_PATH_KEYS = config_keys.path_keys(_SECTION_CLASSES)    # (section, key) resolved against the file's directory


def find_config(option: str | None) -> tuple[Path | None, bool]:
    """Which file to load: --config, then $WEBSOFTTT_CONFIG, then ./websofttt.toml if present.

    Returns (path, explicit); an explicit path that does not exist is an error, an implicit one is skipped.
    """
    if option:
        return Path(option), True
    if os.environ.get(ENV_CONFIG):
        return Path(os.environ[ENV_CONFIG]), True
    default = Path(DEFAULT_CONFIG_NAME)
    return (default, False) if default.exists() else (None, False)


def load_settings(path: Path | None) -> Settings:
    """Read and validate `path` (None: embedded defaults). Raises ConfigError naming file and key."""
    raw: dict[str, Any] = {}
    base = Path.cwd()
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: configuration file not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read configuration: {e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        base = path.resolve().parent
    sections = {}
    for section, values in raw.items():
        if section not in _SCHEMA:
            raise ConfigError(f"{source}: unknown section [{section}]; expected one of: {', '.join(_SCHEMA)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        sections[section] = _section(source, section, values, base)
    settings = Settings(source=source, **{
        name: _instance(name, sections.get(name, {}), base) for name in _SCHEMA})
    return _finish(settings, source)


def _section(source: str, section: str, values: dict[str, Any], base: Path) -> dict[str, Any]:
    schema = _SCHEMA[section]
    parsed = {}
    for name, value in values.items():
        if name not in schema:
            raise ConfigError(f"{source}: unknown key [{section}] {name}; expected one of: {', '.join(schema)}")
        try:
            parsed[name] = schema[name](value)
        except ValueError as e:
            raise ConfigError(f"{source}: [{section}] {name} must be {e}, got {value!r}") from None
    return parsed


def _instance(section: str, values: dict[str, Any], base: Path) -> Any:
    """Build the section's dataclass, resolving relative paths against the config file's directory."""
    for name in list(values):
        if (section, name) in _PATH_KEYS:
            values[name] = (base / values[name]).resolve() if values[name] else None
    if section == "paths" and "data_dir" not in values:
        values["data_dir"] = (base / "var").resolve()
    return _SECTION_CLASSES[section](**values)


def _distinct_listeners(s: Settings, source: str) -> None:
    """Two listeners given one address: refused here, naming both keys, rather than by the kernel at bind
    ("address already in use") without saying which. Port 0 (any free port) may repeat."""
    seen: dict[Listen, str] = {}
    for label, addresses in (("[submission] listen", s.submission.listen), ("[submission] tls_listen", s.submission.tls_listen),
                             ("[inbound] listen", s.inbound.listen), ("[http] listen", s.http.listen)):
        for host, port in addresses:
            if port and (host, port) in seen:
                raise ConfigError(f"{source}: {label} {host}:{port} is also in {seen[host, port]}; each listener "
                                  f"needs an address of its own")
            seen[host, port] = label


def _notice_periods(p: Provider, source: str) -> None:
    """The privacy statement's 30 business days are a floor; the holidays package must know the calendar
    (checked when it is not the default, known good: loading a calendar costs each command 80 ms)."""
    if (p.holiday_country, p.holiday_subdivision) != (Provider.holiday_country, Provider.holiday_subdivision):
        try:
            business_days.Calendar(p.holiday_country, p.holiday_subdivision)
        except ValueError as e:
            raise ConfigError(f"{source}: [provider] holiday_country and holiday_subdivision: {e}") from None
    if p.terms_notice_business_days < MIN_NOTICE_BUSINESS_DAYS:
        raise ConfigError(f"{source}: [provider] terms_notice_business_days must be at least "
                          f"{MIN_NOTICE_BUSINESS_DAYS} (the privacy statement's promise), got {p.terms_notice_business_days}")
    if p.terms_reminder_business_days >= p.terms_notice_business_days:
        raise ConfigError(f"{source}: [provider] terms_reminder_business_days must be below terms_notice_business_days")


def _finish(s: Settings, source: str) -> Settings:
    """Cross-key checks and derived defaults (node name, worker count)."""
    if s.delivery.mode == "smarthost" and s.delivery.smarthost is None:
        raise ConfigError(f"{source}: [delivery] smarthost must be \"host:port\" when mode = \"smarthost\"")
    d = s.delivery
    if bool(d.smarthost_username) != (d.smarthost_password_file is not None):
        raise ConfigError(f"{source}: [delivery] smarthost_username and smarthost_password_file must be given together")
    if d.smarthost_username and not d.smarthost_tls:
        raise ConfigError(f"{source}: [delivery] smarthost_tls must be true when smarthost_username is set "
                          "(no password without TLS)")
    if s.dkim.ed25519_key_file is not None and s.dkim.ed25519_selector == s.dkim.selector:
        raise ConfigError(f"{source}: [dkim] ed25519_selector must differ from selector")
    if (s.tls.cert_file is None) != (s.tls.key_file is None):
        raise ConfigError(f"{source}: [tls] cert_file and key_file must be given together")
    if not (s.submission.listen or s.submission.tls_listen):
        raise ConfigError(f"{source}: [submission] listen and tls_listen are both empty")
    _distinct_listeners(s, source)
    _notice_periods(s.provider, source)
    try:
        egress.check(s.egress.sources, s.egress.pools)
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None
    try:
        shaping_rules.load(d.shaping_file)
    except shaping_rules.RulesError as e:
        raise ConfigError(f"{source}: [delivery] shaping_file: {e}") from None
    name = s.node.name or re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0])[:63] or "node"
    workers = s.node.workers or os.cpu_count() or 1
    return replace(s, node=Node(name=name, workers=workers))

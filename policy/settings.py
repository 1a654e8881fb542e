"""Configuration: one TOML file, loaded once into frozen dataclasses and validated at start-up.

Every error names the file, the key and what is expected, so that an operator's typo is an
exit-2 message and never a traceback or a surprise at the first message.
"""
from __future__ import annotations

import os
import re
import socket
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# Listen, Rate and the parsers are re-exported: callers import them from here
from policy.values import (Listen, Rate, _address, _bool, _count, _dir, _domain, _fraction, _listen_list, _mode,
                           _node_name, _optional_listen, _routes, _schedule, _selector, _store_url, _str, _url,
                           _workers, parse_duration, parse_rate)

DEFAULT_CONFIG_NAME = "websofttt.toml"
ROLES = ("submission", "delivery", "inbound", "http")     # what `serve --only` may name
ENV_CONFIG = "WEBSOFTTT_CONFIG"


class ConfigError(Exception):
    """A configuration problem; the message names the file and key."""


@dataclass(frozen=True)
class Provider:
    domain: str = "websofttt.com"
    bounce_domain: str = "bounces.websofttt.com"
    hostname: str = "relay.websofttt.com"
    abuse_address: str = "4abuse@websofttt.com"
    privacy_address: str = "4privacy@websofttt.com"
    terms_version: str = "2026-01"

    @property
    def domains(self) -> frozenset[str]:
        """Domains that identify the provider: mail may come From them, tenants may not forge them."""
        return frozenset({self.domain, self.bounce_domain})


@dataclass(frozen=True)
class Node:
    name: str = ""
    workers: int = 0


@dataclass(frozen=True)
class Paths:
    data_dir: Path = Path("./var")


@dataclass(frozen=True)
class Store:
    url: str = ""
    acquire_timeout: float = 2.0           # seconds a command waits for a PostgreSQL connection before 451 4.3.0


@dataclass(frozen=True)
class Submission:
    listen: tuple[Listen, ...] = (("127.0.0.1", 8587),)
    tls_listen: tuple[Listen, ...] = ()
    max_message_size: int = 26214400
    max_recipients: int = 100
    auth_failures: int = 5                 # failed AUTHs per username or client IP ...
    auth_failure_window: float = 600.0     # ... within this window lock both out (454 4.7.0)
    auth_cache_ttl: float = 3600.0         # a worker skips scrypt for a login it verified this recently; 0: off
    auth_cache_size: int = 10000           # logins each worker keeps verified (oldest dropped first)
    timeout: float = 300.0                 # idle seconds before the server closes a session
    trust_cache_ttl: float = 5.0           # seconds a worker trusts what it read of a tenant (networks, status)
    shutdown_grace: float = 30.0           # on SIGTERM, how long open transactions may take to finish
    proxy_protocol: bool = False           # `listen` addresses expect a PROXY header (v1/v2) first


@dataclass(frozen=True)
class Inbound:
    listen: tuple[Listen, ...] = (("127.0.0.1", 8025),)
    max_message_size: int = 10485760       # replies, bounces and complaints are small; 10 MiB is generous
    max_recipients: int = 20
    max_connections_per_ip: int = 20       # per node, divided among the workers
    timeout: float = 120.0                 # idle seconds before a session is closed
    retention: float = 30 * 86400          # raw inbound messages are kept this long (evidence), then deleted
    proxy_protocol: bool = False           # every connection starts with a PROXY header (v1/v2)


@dataclass(frozen=True)
class Http:
    listen: tuple[Listen, ...] = (("127.0.0.1", 8080),)
    public_url: str = "http://127.0.0.1:8080"


@dataclass(frozen=True)
class Tls:
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True)
class Dkim:
    selector: str = "s1"
    key_file: Path | None = None
    ed25519_selector: str = "e1"           # selector of the optional second, Ed25519 signature (RFC 8463)
    ed25519_key_file: Path | None = None   # empty: no Ed25519 signature; `init` creates the file if missing
    rotation_delay: float = 48 * 3600      # `dkim rotate`: the new key signs once DNS had this long


@dataclass(frozen=True)
class Tokens:
    secret_file: Path | None = None


@dataclass(frozen=True)
class Delivery:
    mode: str = "mx"
    smarthost: Listen | None = None
    smarthost_tls: bool = False            # require STARTTLS with a verified certificate to the smarthost
    smarthost_ca_file: Path | None = None  # CA bundle for that check (empty: the system's)
    smarthost_username: str = ""           # AUTH to the smarthost (over TLS only)
    smarthost_password_file: Path | None = None
    routes: dict[str, Listen] = field(default_factory=dict)
    retry_schedule: tuple[float, ...] = (60, 300, 900, 1800, 3600, 7200, 14400)
    max_queue_lifetime: float = 5 * 86400
    sent_retention: float = 180 * 86400    # how long a token still maps to its tenant and recipient
    concurrency: int = 100                 # outbound connections in all, per worker
    per_destination: int = 10              # outbound connections to one host:port, per worker
    messages_per_connection: int = 100     # then the connection is closed and a new one opened
    connect_timeout: float = 30.0
    command_timeout: float = 300.0         # RFC 5321 4.5.3.2: 5 minutes for greeting, MAIL, RCPT
    data_timeout: float = 600.0            # RFC 5321 4.5.3.2: 10 minutes for the end of DATA


@dataclass(frozen=True)
class Policy:
    complaint_rate: float = 0.003
    complaint_window: float = 7 * 86400
    complaint_min_volume: int = 1000
    bounce_rate: float = 0.10
    ack_interval: float = 86400
    tenant_rate: Rate = Rate(10000, 3600)
    soft_bounce_limit: int = 5             # soft bounces of one recipient ...
    soft_bounce_window: float = 14 * 86400  # ... within this window, with no delivery in between ...
    soft_bounce_suppression: float = 30 * 86400  # ... suppress it for the tenant this long


@dataclass(frozen=True)
class Privacy:
    mask_recipients: bool = True           # logs show j***@example.net instead of the address
    stats_min_count: int = 5               # `stats` cells below this are suppressed (k-anonymity)
    events_retention: float = 400 * 86400  # events, bounce records and hourly counts are purged after this


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
    policy: Policy = Policy()
    privacy: Privacy = Privacy()
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


# section -> key -> parser; the example configuration documents the same keys
_SCHEMA: dict[str, dict[str, Any]] = {
    "provider": {"domain": _domain, "bounce_domain": _domain, "hostname": _domain,
                 "abuse_address": _address, "privacy_address": _address, "terms_version": _str},
    "node": {"name": _node_name, "workers": _workers},
    "paths": {"data_dir": _dir},
    "store": {"url": _store_url, "acquire_timeout": parse_duration},
    "submission": {"listen": _listen_list, "tls_listen": _listen_list, "max_message_size": _count,
                   "max_recipients": _count, "auth_failures": _count, "auth_failure_window": parse_duration,
                   "auth_cache_ttl": parse_duration, "auth_cache_size": _count,
                   "timeout": parse_duration, "trust_cache_ttl": parse_duration,
                   "shutdown_grace": parse_duration, "proxy_protocol": _bool},
    "inbound": {"listen": _listen_list, "max_message_size": _count, "max_recipients": _count,
                "max_connections_per_ip": _count, "timeout": parse_duration, "retention": parse_duration,
                "proxy_protocol": _bool},
    "http": {"listen": _listen_list, "public_url": _url},
    "tls": {"cert_file": _str, "key_file": _str},
    "dkim": {"selector": _selector, "key_file": _str, "ed25519_selector": _selector, "ed25519_key_file": _str,
             "rotation_delay": parse_duration},
    "tokens": {"secret_file": _str},
    "delivery": {"mode": _mode, "smarthost": _optional_listen, "smarthost_tls": _bool, "smarthost_ca_file": _str,
                 "smarthost_username": _str, "smarthost_password_file": _str, "routes": _routes,
                 "retry_schedule": _schedule, "max_queue_lifetime": parse_duration,
                 "sent_retention": parse_duration, "concurrency": _count, "per_destination": _count,
                 "messages_per_connection": _count, "connect_timeout": parse_duration,
                 "command_timeout": parse_duration, "data_timeout": parse_duration},
    "policy": {"complaint_rate": _fraction, "complaint_window": parse_duration,
               "complaint_min_volume": _count, "bounce_rate": _fraction,
               "ack_interval": parse_duration, "tenant_rate": parse_rate, "soft_bounce_limit": _count,
               "soft_bounce_window": parse_duration, "soft_bounce_suppression": parse_duration},
    "privacy": {"mask_recipients": _bool, "stats_min_count": _count, "events_retention": parse_duration},
}
_SECTION_CLASSES = {"provider": Provider, "node": Node, "paths": Paths, "store": Store,
                    "submission": Submission, "inbound": Inbound, "http": Http, "tls": Tls, "dkim": Dkim,
                    "tokens": Tokens, "delivery": Delivery, "policy": Policy, "privacy": Privacy}
_PATH_KEYS = {("paths", "data_dir"), ("tls", "cert_file"), ("tls", "key_file"),
              ("dkim", "key_file"), ("dkim", "ed25519_key_file"), ("tokens", "secret_file"), ("delivery", "smarthost_ca_file"),
              ("delivery", "smarthost_password_file")}


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
    for key, value in values.items():
        if key not in schema:
            raise ConfigError(f"{source}: unknown key [{section}] {key}; expected one of: {', '.join(schema)}")
        try:
            parsed[key] = schema[key](value)
        except ValueError as e:
            raise ConfigError(f"{source}: [{section}] {key} must be {e}, got {value!r}") from None
    return parsed


def _instance(section: str, values: dict[str, Any], base: Path) -> Any:
    """Build the section's dataclass, resolving relative paths against the config file's directory."""
    for key in list(values):
        if (section, key) in _PATH_KEYS:
            values[key] = (base / values[key]).resolve() if values[key] else None
    if section == "paths" and "data_dir" not in values:
        values["data_dir"] = (base / "var").resolve()
    return _SECTION_CLASSES[section](**values)


def _distinct_listeners(s: Settings, source: str) -> None:
    """Two listeners given one address: refused here, naming both keys, rather than by the kernel at bind
    ("address already in use") without saying which. Port 0 (any free port) may repeat."""
    seen: dict[Listen, str] = {}
    for key, addresses in (("[submission] listen", s.submission.listen), ("[submission] tls_listen", s.submission.tls_listen),
                           ("[inbound] listen", s.inbound.listen), ("[http] listen", s.http.listen)):
        for host, port in addresses:
            if port and (host, port) in seen:
                raise ConfigError(f"{source}: {key} {host}:{port} is also in {seen[host, port]}; each listener "
                                  f"needs an address of its own")
            seen[host, port] = key


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
    name = s.node.name or re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0])[:63] or "node"
    workers = s.node.workers or os.cpu_count() or 1
    return replace(s, node=Node(name=name, workers=workers))

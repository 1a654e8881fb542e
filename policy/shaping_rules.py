"""Delivery shaping rules: each site's limits, and the automation that reacts to a site's replies.

A site is where copies go. A rule's site takes every recipient domain that its `match` names, and every
domain whose MX hosts match one of its patterns (`*.google.com`: gmail.com and every Google Workspace
domain share one site and its limits: MX rollup). A route's or the smarthost's next hop is a site of
its own (`host:port`), and so is every other domain's set of MX hosts; those take the `[default]` limits.

The rules file (`[delivery] shaping_file`, else the shipped config/shaping.toml) is read at start and a
bad one stops it, naming the file, the section and the key:

    [default]                                  # limits of the sites no rule names
    max_message_rate = "2000/min"
    [sites.gmail]
    match = ["gmail.com", "googlemail.com", "*.google.com"]
    max_message_rate = "500/min"               # shared by every node (paced through the store)
    max_connections = 20                       # per node: open at once
    max_messages_per_connection = 100          # then a new connection
    max_connection_rate = "60/min"             # per node: new connections
    [[automation]]
    name = "gmail-rate-limited"
    status = "4.7.28"                          # the reply's enhanced status (a prefix), and/or
    text = "(?i)unusual rate"                  # a regular expression over the reply
    sites = ["gmail"]                          # empty or absent: every site
    action = "reduce"                          # reduce | suspend | suspend_source (the egress source it came from)
    factor = 0.5                               # reduce: the rate is multiplied by it while the action lasts
    for = "30m"
"""
from __future__ import annotations

import fnmatch
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policy.values import Rate, parse_duration, parse_rate

SHIPPED = Path(__file__).resolve().parents[1] / "config" / "shaping.toml"
ACTIONS = ("reduce", "suspend", "suspend_source")
_LIMIT_KEYS = ("max_message_rate", "max_connections", "max_messages_per_connection", "max_connection_rate")
_SITE_KEYS = {"match", *_LIMIT_KEYS}
_AUTOMATION_KEYS = {"name", "status", "text", "sites", "action", "factor", "for"}
_STATUS = re.compile(r"^[245](?:\.\d{1,3}){0,2}$")
_SITE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class RulesError(ValueError):
    """A bad rules file; the message names the file, the section and the key."""


@dataclass(frozen=True)
class Limits:
    max_message_rate: Rate | None = None      # copies per period to the site, all nodes together
    max_connections: int | None = None        # connections open to the site at once, per node
    max_messages_per_connection: int | None = None   # then the connection is closed (else delivery's setting)
    max_connection_rate: Rate | None = None   # new connections per period to the site, per node


@dataclass(frozen=True)
class SiteRule:
    name: str
    domains: tuple[str, ...]                  # recipient domains, exactly
    hosts: tuple[str, ...]                    # MX host patterns (fnmatch, lower case)
    limits: Limits


@dataclass(frozen=True)
class Automation:
    name: str
    status: str                               # prefix of the reply's enhanced status, "" for any
    text: re.Pattern[str] | None              # searched in the reply, None for any
    sites: tuple[str, ...]                    # () for every site
    action: str                               # "reduce" | "suspend" | "suspend_source"
    factor: float
    duration: float

    def matches(self, site: str, status: str, reply: str) -> bool:
        if self.sites and site not in self.sites:
            return False
        if self.status and not (status == self.status or status.startswith(self.status + ".")):
            return False
        return self.text is None or self.text.search(reply) is not None


@dataclass(frozen=True)
class Rules:
    source: str
    default: Limits = Limits()
    sites: tuple[SiteRule, ...] = ()
    automation: tuple[Automation, ...] = field(default=())

    def site_for(self, domain: str, mx_hosts: list[str]) -> SiteRule | None:
        """The rule whose site takes this domain (by name, else by one of its MX hosts), or None."""
        domain = domain.lower().rstrip(".")
        for rule in self.sites:
            if domain in rule.domains:
                return rule
        hosts = [h.lower().rstrip(".") for h in mx_hosts]
        return next((r for r in self.sites if any(fnmatch.fnmatchcase(h, p) for h in hosts for p in r.hosts)), None)

    def limits(self, name: str) -> Limits:
        return next((r.limits for r in self.sites if r.name == name), self.default)


def load(path: Path | None) -> Rules:
    """The rules of `path`, or of the shipped file when it is None; RulesError when they are bad."""
    path = path or SHIPPED
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise RulesError(f"{path}: cannot read the shaping file: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise RulesError(f"{path}: not valid TOML: {e}") from None
    where = str(path)
    unknown = set(data) - {"default", "sites", "automation"}
    if unknown:
        raise RulesError(f"{where}: unknown section [{sorted(unknown)[0]}] (default, sites, automation)")
    default = _limits(_table(data.get("default", {}), where, "[default]"), where, "[default]", set(_LIMIT_KEYS))
    sites = tuple(_site(name, _table(spec, where, f"[sites.{name}]"), where)
                  for name, spec in _table(data.get("sites", {}), where, "[sites]").items())
    names = {s.name for s in sites}
    automation = data.get("automation", [])
    if not isinstance(automation, list):
        raise RulesError(f"{where}: automation must be an array of tables ([[automation]])")
    rules = tuple(_automation(i, _table(spec, where, f"[[automation]] #{i + 1}"), where, names)
                  for i, spec in enumerate(automation))
    return Rules(where, default, sites, rules)


def _table(value: Any, where: str, section: str) -> dict:
    if not isinstance(value, dict):
        raise RulesError(f"{where}: {section} must be a table")
    return value


def _limits(spec: dict, where: str, section: str, allowed: set[str]) -> Limits:
    unknown = set(spec) - allowed
    if unknown:
        raise RulesError(f"{where}: {section} unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(allowed))})")
    values: dict[str, Any] = {}
    for name in allowed & set(_LIMIT_KEYS):
        value = spec.get(name)
        if value in (None, ""):
            continue
        try:
            values[name] = parse_rate(value) if name.endswith("_rate") else _count(value)
        except ValueError as e:
            raise RulesError(f"{where}: {section} {name}: {e}, got {value!r}") from None
    return Limits(**values)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("a whole number of at least 1")
    return value


def _site(name: str, spec: dict, where: str) -> SiteRule:
    section = f"[sites.{name}]"
    if not _SITE_NAME.match(name):
        raise RulesError(f"{where}: {section}: a site name is lower-case letters, digits, '-' and '_'")
    match = spec.get("match")
    if not isinstance(match, list) or not match or not all(isinstance(m, str) and m.strip() for m in match):
        raise RulesError(f"{where}: {section} match: a list of domains and MX-host patterns, got {match!r}")
    patterns = [m.strip().lower().rstrip(".") for m in match]
    return SiteRule(name, tuple(p for p in patterns if not any(c in p for c in "*?[")), tuple(patterns),
                    _limits({k: v for k, v in spec.items() if k != "match"}, where, section, _SITE_KEYS - {"match"}))


def _automation(index: int, spec: dict, where: str, sites: set[str]) -> Automation:
    section = f"[[automation]] {spec.get('name', f'#{index + 1}')!s}"
    unknown = set(spec) - _AUTOMATION_KEYS
    if unknown:
        raise RulesError(f"{where}: {section} unknown key {sorted(unknown)[0]!r} "
                         f"(known: {', '.join(sorted(_AUTOMATION_KEYS))})")
    name, status, text = spec.get("name"), spec.get("status", ""), spec.get("text")
    if not isinstance(name, str) or not name:
        raise RulesError(f"{where}: {section} name: a name is required")
    if not isinstance(status, str) or (status and not _STATUS.match(status)):
        raise RulesError(f"{where}: {section} status: an enhanced status or its prefix such as \"4.7.28\", got {status!r}")
    try:
        pattern = re.compile(text) if text is not None else None
    except (re.error, TypeError) as e:
        raise RulesError(f"{where}: {section} text: not a regular expression: {e}") from None
    if not status and pattern is None:
        raise RulesError(f"{where}: {section}: status or text is required (a rule that matches every reply)")
    listed = spec.get("sites", [])
    if not isinstance(listed, list) or any(s not in sites for s in listed):
        raise RulesError(f"{where}: {section} sites: names of [sites.*] sections, got {listed!r}")
    action = spec.get("action")
    if action not in ACTIONS:
        raise RulesError(f"{where}: {section} action: one of {', '.join(ACTIONS)}, got {action!r}")
    factor = spec.get("factor", 0.5)
    if action == "reduce" and not (isinstance(factor, (int, float)) and 0 < factor < 1):
        raise RulesError(f"{where}: {section} factor: a number between 0 and 1 (exclusive), got {factor!r}")
    try:
        duration = parse_duration(spec.get("for"))
    except ValueError as e:
        raise RulesError(f"{where}: {section} for: {e}, got {spec.get('for')!r}") from None
    return Automation(name, status, pattern, tuple(listed), action, float(factor), duration)

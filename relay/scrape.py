"""What the http role reads at scrape time: this node's queue and every tenant's standing.

Counters are kept by the processes that count (policy/metrics); these gauges are read when /metrics is
asked, so they cost nothing between scrapes. Also the health checks of /healthz beyond the store: the
spool shards must be readable and the spool directory writable. Wired into the http role by the
composition root (relay/cli/node.py), since inbound/ cannot import relay/.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from policy import cases, standing, tenants
from policy.metrics import SCRAPED
from policy.settings import Settings
from policy.store import Store, epoch
from relay.spool_files import pending_stats


class NodeCollector:
    def __init__(self, settings: Settings, store: Store):
        self.settings, self.store = settings, store

    def collect(self) -> Iterator[Metric]:
        depth, oldest = pending_stats(self.settings.spool_dir)
        age = time.time() - epoch(oldest) if oldest else 0.0
        yield _gauge("websofttt_queue_depth", depth)
        yield _gauge("websofttt_queue_oldest_age_seconds", max(0.0, age))
        rules = self.settings.policy
        rates = {name: GaugeMetricFamily(name, SCRAPED[name], labels=["tenant"]) for name in (
            "websofttt_tenant_complaint_rate", "websofttt_tenant_bounce_rate", "websofttt_tenant_suspended")}
        for tenant in (t for t in tenants.all_tenants(self.store) if not t.removed):     # offboarded: no series
            s = standing.standing(self.store, rules, tenant.id)
            rates["websofttt_tenant_complaint_rate"].add_metric([tenant.id], s.complaint_rate)
            rates["websofttt_tenant_bounce_rate"].add_metric([tenant.id], s.bounce_rate)
            rates["websofttt_tenant_suspended"].add_metric([tenant.id], 0.0 if tenant.active else 1.0)
        yield from rates.values()
        open_cases, oldest_case = cases.open_stats(self.store)
        yield _gauge("websofttt_cases_open", open_cases)
        yield _gauge("websofttt_case_oldest_open_age_seconds", max(0.0, time.time() - epoch(oldest_case)) if oldest_case
                     else 0.0)
        yield _gauge("websofttt_complaint_rate_limit", rules.complaint_rate)
        yield _gauge("websofttt_bounce_rate_limit", rules.bounce_rate)


def _gauge(name: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, SCRAPED[name], value=value)


def spool_check(settings: Settings) -> Callable[[], None]:
    """Raises OSError or sqlite3.Error when this node's spool cannot take mail."""
    def check() -> None:
        pending_stats(settings.spool_dir)
        if not os.access(settings.spool_dir, os.W_OK):
            raise OSError(f"spool directory {settings.spool_dir} is not writable")
    return check


def observers(settings: Settings, store: Store) -> tuple[list, dict[str, Callable[[], None]]]:
    """(collectors for /metrics, named checks for /healthz) of this node."""
    return [NodeCollector(settings, store)], {"spool": spool_check(settings)}

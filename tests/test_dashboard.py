"""config/grafana-dashboard.json names only metrics the relay exports, and covers all of them."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "config" / "grafana-dashboard.json"
METRIC = re.compile(r"(?<![A-Za-z0-9_:])websofttt_[A-Za-z0-9_:]*")

# Run in a child interpreter: policy.metrics registers its collectors in prometheus-client's default REGISTRY, and
# prometheus-client picks single- or multi-process values once, when it is first imported. Importing it here would
# fix that choice for every later test in this session before relay/serve has set PROMETHEUS_MULTIPROC_DIR.
_EXPORTED = r"""
import json
from prometheus_client.metrics import MetricWrapperBase
import policy.metrics as m

suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("", "_sum", "_count", "_created"), "gauge": ("",), "info": ("_info",),
            "enum": ("",)}
collectors = {}
for attr, value in vars(m).items():
    if isinstance(value, MetricWrapperBase):
        for family in value.describe():
            collectors[family.name] = [family.name + s for s in suffixes[family.type]]
print(json.dumps({"collectors": collectors, "scraped": sorted(m.SCRAPED)}))
"""


@pytest.fixture(scope="module")
def exported() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    out = subprocess.run([sys.executable, "-c", _EXPORTED], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True).stdout
    data = json.loads(out)
    assert data["collectors"], "no prometheus_client collectors found in policy/metrics.py"
    assert data["scraped"], "SCRAPED is empty"
    return data


@pytest.fixture(scope="module")
def exported_names(exported) -> set[str]:
    names = {name for series in exported["collectors"].values() for name in series}
    return names | set(exported["scraped"])


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list) -> list[dict]:
    """Every panel, rows' nested (collapsed) panels included."""
    found = []
    for panel in panels:
        found.append(panel)
        found += all_panels(panel.get("panels", []))
    return found


def exprs(panel: dict) -> list[str]:
    return [t["expr"] for t in panel.get("targets", []) if "expr" in t]


def variable_query(var: dict) -> str:
    query = var.get("query", "")
    return query.get("query", "") if isinstance(query, dict) else query


def test_dashboard_shape(dashboard):
    assert dashboard["schemaVersion"] == 39
    assert any(i["name"] == "DS_PROMETHEUS" and i["pluginId"] == "prometheus" for i in dashboard["__inputs"])
    panels = all_panels(dashboard["panels"])
    assert [p for p in panels if p["type"] != "row"], "no panels"
    assert [p["title"] for p in panels if p["type"] == "row"] == ["Throughput", "Delivery problems", "Queue", "Abuse"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), panel["title"]
        assert all(t.get("expr") for t in panel["targets"]), panel["title"]
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
    tenant = [v for v in dashboard["templating"]["list"] if v["name"] == "tenant"]
    assert tenant and tenant[0]["multi"] and tenant[0]["includeAll"]
    assert variable_query(tenant[0]) == "label_values(websofttt_delivered_total, tenant)"


def test_every_expr_names_an_exported_metric(dashboard, exported_names):
    seen = 0
    for panel in all_panels(dashboard["panels"]):
        for expr in exprs(panel):
            seen += 1
            names = set(METRIC.findall(expr))
            assert names, f"{panel['title']}: {expr!r} names no websofttt_ metric"
            unknown = names - exported_names
            assert not unknown, f"{panel['title']}: {sorted(unknown)} not exported by the relay"
    assert seen


def test_template_variables_name_exported_metrics(dashboard, exported_names):
    queries = [variable_query(v) for v in dashboard["templating"]["list"] if v.get("type") == "query"]
    assert queries
    for query in queries:
        names = set(METRIC.findall(query))
        assert names, query
        assert names <= exported_names, f"{query!r}: {sorted(names - exported_names)} not exported"


def test_every_exported_metric_is_on_a_panel(dashboard, exported):
    used = {name for panel in all_panels(dashboard["panels"]) for expr in exprs(panel)
            for name in METRIC.findall(expr)}
    missing = [base for base, series in exported["collectors"].items() if not used & set(series)]
    missing += [name for name in exported["scraped"] if name not in used]
    assert not missing, f"exported but on no panel: {missing}"

"""deploy/grafana/regproxy.json queries what regproxy exports: every metric a panel or a template
variable names, and every label it filters on, groups by or shows in a legend, is in ``GET /metrics``
of running sidecars (tests/test_admin.py's pair on memory://: a provider sidecar and a consumer
sidecar the demo client calls through, plus a refused dynamic rule so that the rule-error series
exist).  A renamed metric or label fails here, not on an operator's empty graph.

And it is a dashboard Grafana imports: panels with unique ids and a place on the grid, every target
an expression on the data source variable, the template variables the panels use.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from regproxy.demo.client import DubboCallError
from regproxy.governance.keys import CONDITION_ROUTER, service_rule_key
from regproxy.registry.memory import MemoryRegistry
from tests.test_admin import GREET, VERSION, Pair, pair, send_calls  # noqa: F401  (pair: the fixture)
from tests.wait import wait_for

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "regproxy.json"
# Labels Prometheus adds to every series it scrapes: they are never in /metrics itself.
TARGET_LABELS = {"instance", "job"}
VARIABLES = {"datasource", "instance", "listener", "protocol", "service"}

METRIC = re.compile(r"\bregproxy_[a-z_]+\b")
SELECTOR = re.compile(r"\b(regproxy_[a-z_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
LEGEND = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
QUANTILE = re.compile(r"histogram_quantile\s*\(\s*[0-9.]+\s*,(.*)", re.S)


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    out: list[dict[str, Any]] = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def queries(dash: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(where, PromQL, legend format) of every panel target and query variable."""
    out = [
        (f"panel {p['id']} {p['title']!r} target {t['refId']}", t["expr"], t.get("legendFormat", ""))
        for p in panels(dash)
        for t in p.get("targets", [])
    ]
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            text = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            inner = re.fullmatch(r"label_values\((.*),\s*([A-Za-z_]+)\)", text)
            assert inner is not None, f"variable {v['name']}: {text}"
            # label_values(SELECTOR, LABEL): LABEL must be a label of SELECTOR's metric.
            out.append((f"variable {v['name']}", f"sum by ({inner[2]}) ({inner[1]})", ""))
    return out


class Scrape:
    """What /metrics showed: each sample name's family type and the labels its samples carry."""

    def __init__(self, texts: list[str]) -> None:
        self.types: dict[str, str] = {}
        self.labels: dict[str, set[str]] = defaultdict(set)
        for text in texts:
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    self.types[s.name] = family.type
                    self.labels[s.name] |= set(s.labels)

    def problems(self, where: str, expr: str, legend: str) -> list[str]:
        found: list[str] = []
        names = set(METRIC.findall(expr))
        if not names:
            found.append(f"{where}: no regproxy metric in {expr!r}")
        for name in sorted(names - set(self.types)):
            found.append(f"{where}: {name} is not in /metrics")
        known = names & set(self.types)
        for name in sorted(known):
            # A histogram is queried through its _bucket, _sum and _count series, never by its bare name
            # (a counter through its _total one): the scrape's own sample names say which exist.
            if name.endswith("_bucket") and self.types[name] != "histogram":
                found.append(f"{where}: {name} is not a histogram's buckets")
        for name, matchers in SELECTOR.findall(expr):
            for label in MATCHER.findall(matchers):
                if label not in TARGET_LABELS and name in self.types and label not in self.labels[name]:
                    found.append(f"{where}: {name} has no label {label!r} ({sorted(self.labels[name])})")
        available = set().union(*(self.labels[n] for n in known)) | TARGET_LABELS
        grouped = {lbl.strip() for group in GROUPING.findall(expr) for lbl in group.split(",") if lbl.strip()}
        for label in sorted(grouped - available):
            found.append(f"{where}: grouped by {label!r}, which none of {sorted(known)} has")
        for label in sorted(set(LEGEND.findall(legend)) - available):
            found.append(f"{where}: the legend shows {label!r}, which none of {sorted(known)} has")
        for quantile in QUANTILE.findall(expr):
            # histogram_quantile needs buckets, summed by `le` (else it has no buckets to read).
            buckets = re.search(r"regproxy_[a-z_]+_bucket\b", quantile)
            if not buckets or not re.search(r"by\s*\([^)]*\ble\b", quantile):
                found.append(f"{where}: histogram_quantile over something other than buckets by le")
        return found


# --- the dashboard's shape -----------------------------------------------------------------------------


def test_dashboard_shape() -> None:
    dash = dashboard()
    assert dash["uid"] and dash["title"] and 36 <= dash["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert set(variables) == VARIABLES
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    ids = [p["id"] for p in panels(dash)]
    assert all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids)), ids
    cells: dict[tuple[int, int], int] = {}
    for p in panels(dash):
        g = p["gridPos"]
        assert {"x", "y", "w", "h"} <= set(g) and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panels {cells.get((x, y))} and {p['id']} overlap"
                cells[(x, y)] = p["id"]
        if p["type"] == "row":
            continue
        assert p["title"] and p["targets"], p
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["datasource"] == p["datasource"], (p["title"], t)
    # Every variable a query uses is defined, and every filter variable is used by some panel.
    used = set()
    for _where, expr, _legend in queries(dash):
        used |= set(re.findall(r"\$([a-z_]+)", expr)) - {"__rate_interval", "__interval", "__range"}
    assert used <= set(variables), used - set(variables)
    assert used >= VARIABLES - {"datasource"}


def test_dashboard_has_the_panels_operators_look_for() -> None:
    exprs = " ".join(expr for _w, expr, _l in queries(dashboard()))
    for name in (
        "regproxy_requests_total",
        "regproxy_responses_total",
        "regproxy_request_duration_seconds_bucket",
        "regproxy_upstream_requests_total",
        "regproxy_ejections_total",
        "regproxy_registry_state",
        "regproxy_rule_errors_total",
        "regproxy_requests_in_flight",
        "regproxy_downstream_connections",
        "regproxy_upstream_connections",
    ):
        assert name in exprs, name
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.99," in exprs


def test_checker_notices_what_is_not_exported() -> None:
    scrape = Scrape(
        [
            '# TYPE regproxy_x counter\nregproxy_x_total{listener="egress"} 1\n'
            '# TYPE regproxy_h histogram\nregproxy_h_bucket{service="s",le="+Inf"} 1\n'
            'regproxy_h_count{service="s"} 1\nregproxy_h_sum{service="s"} 1\n'
        ]
    )

    def count(expr: str, legend: str = "") -> int:
        return len(scrape.problems("t", expr, legend))

    assert count('sum by (listener) (rate(regproxy_x_total{listener="e"}[1m]))', "{{listener}}") == 0
    assert count("histogram_quantile(0.9, sum by (le, service) (rate(regproxy_h_bucket[1m])))") == 0
    assert count("rate(regproxy_x[1m])") == 1  # a counter without _total
    assert count("rate(regproxy_h[1m])") == 1  # a histogram's bare name
    assert count('rate(regproxy_x_total{protocol="dubbo"}[1m])') == 1  # a label it does not have
    assert count("sum by (address) (regproxy_x_total)") == 1
    assert count("sum(regproxy_x_total)", "{{status}}") == 1
    assert count("histogram_quantile(0.9, sum by (service) (rate(regproxy_h_bucket[1m])))") == 1  # no le
    # No buckets under the quantile, and so no `le` to group by: two problems.
    assert count("histogram_quantile(0.9, sum by (le) (rate(regproxy_x_total[1m])))") == 2


# --- against running sidecars ------------------------------------------------------------------------


async def test_every_queried_metric_and_label_is_exported(pair: Pair) -> None:  # noqa: F811
    client = await send_calls(pair.consumer)
    try:
        # An error the provider answers (no such method), so that the per-host error series exist.
        with pytest.raises(DubboCallError):
            await client.call(GREET, "noSuchMethod", [], version=VERSION)
        # A condition rule that does not parse, for the consumer's subscription: refused and counted
        # (regproxy_rule_errors_total{source, reason}); the memory:// store is shared by both sidecars.
        disc = pair.consumer.sidecar.discovery
        assert disc is not None
        (registry,) = disc.registries.values()
        assert isinstance(registry, MemoryRegistry)
        await registry.write_rule(service_rule_key(GREET, VERSION) + CONDITION_ROUTER, "conditions: [\n")

        async def refused() -> bool:
            return "regproxy_rule_errors_total{" in await pair.text(f"{pair.consumer.admin}/metrics")

        await wait_for(refused, 5, "the refused rule counted")
        scrape = Scrape([await pair.text(f"{node.admin}/metrics") for node in (pair.consumer, pair.provider)])
    finally:
        client.close()
    problems = [
        p for where, expr, legend in queries(dashboard()) for p in scrape.problems(where, expr, legend)
    ]
    assert problems == []

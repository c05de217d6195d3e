"""The chart's monitoring, off by default: a ServiceMonitor, a PrometheusRule and Grafana dashboard
ConfigMaps, each valid for its schema (CRDs in crds/), wired from the stack (`liftoff:monitoring`);
the dashboard JSON fits Grafana's dashboard model, and each of its queries parses with promtool
and names only series the gateway exports."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from app.metrics import Metrics
from infra.mocking import run_program
from tests.app.metrics_scrape import exported_series_names, scrape_after_traffic
from tests.charts import crds
from tests.charts.chart import CHART_DIR, FULLNAME, NAMESPACE, Manifests, render, template
from tests.charts.validation import validate_all
from tests.fixtures.promtool import run_promtool

DASHBOARD_DIR = CHART_DIR / "dashboards"
ALL_ON = {
    "serviceMonitor": {
        "enabled": True,
        "interval": "15s",
        "scrapeTimeout": "5s",
        "labels": {"release": "kube-prometheus-stack"},
        "relabelings": [
            {
                "action": "replace",
                "sourceLabels": ["__meta_kubernetes_pod_node_name"],
                "targetLabel": "node",
            }
        ],
        "metricRelabelings": [
            {"action": "drop", "sourceLabels": ["__name__"], "regex": ".*_created"}
        ],
    },
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "dashboards": {"enabled": True, "annotations": {"grafana_folder": "Liftoff"}},
}
# Grafana's built-in interval variables, replaced by a duration before promtool parses a query.
GRAFANA_INTERVALS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def _dashboard_maps(manifests: Manifests) -> list[dict[str, Any]]:
    return [
        cm
        for cm in manifests.of_kind("ConfigMap")
        if cm["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]


# --- rendering -----------------------------------------------------------------------------


def test_monitoring_is_off_by_default() -> None:
    manifests = render()
    assert not manifests.of_kind("ServiceMonitor") and not manifests.of_kind("PrometheusRule")
    assert not _dashboard_maps(manifests)


@pytest.mark.parametrize("part", sorted(ALL_ON))
def test_each_part_turns_on_alone(part: str) -> None:
    manifests = render({part: ALL_ON[part]})
    assert bool(manifests.of_kind("ServiceMonitor")) == (part == "serviceMonitor")
    assert bool(manifests.of_kind("PrometheusRule")) == (part == "prometheusRule")
    assert bool(_dashboard_maps(manifests)) == (part == "dashboards")


def test_all_on_renders_valid_objects_for_their_crds() -> None:
    manifests = render(ALL_ON)
    validate_all(manifests)
    assert crds.has_schema(manifests.one("ServiceMonitor"))
    assert crds.has_schema(manifests.one("PrometheusRule"))


def test_service_monitor_scrapes_the_service_metrics_port() -> None:
    manifests = render(ALL_ON)
    monitor, service = manifests.one("ServiceMonitor"), manifests.one("Service")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert (endpoint["path"], endpoint["interval"], endpoint["scrapeTimeout"]) == (
        "/metrics",
        "15s",
        "5s",
    )
    assert endpoint["relabelings"] == ALL_ON["serviceMonitor"]["relabelings"]
    assert endpoint["metricRelabelings"] == ALL_ON["serviceMonitor"]["metricRelabelings"]


def test_rules_select_the_service_monitor_job() -> None:
    """The job label of scraped series is the Service name: every gateway rule selects on it."""
    manifests = render(ALL_ON)
    service = manifests.one("Service")["metadata"]["name"]
    for group in manifests.one("PrometheusRule")["spec"]["groups"]:
        for rule in group["rules"]:
            if "liftoff_" in rule["expr"]:
                assert f'job="{service}",namespace="{NAMESPACE}"' in rule["expr"], rule["alert"]


def test_scrape_timeout_above_the_interval_fails_with_a_message() -> None:
    result = template(
        {"serviceMonitor": {"enabled": True, "interval": "10s", "scrapeTimeout": "1m"}}
    )
    assert result.returncode != 0
    assert "serviceMonitor.scrapeTimeout (1m) must not exceed serviceMonitor.interval (10s)" in (
        result.stderr
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"serviceMonitor": {"interval": "thirty"}}, "interval"),
        ({"serviceMonitor": {"path": "/other"}}, "path"),
        ({"prometheusRule": {"errorRatio": 2}}, "errorRatio"),
        ({"prometheusRule": {"ttftP95Seconds": 0}}, "ttftP95Seconds"),
        ({"prometheusRule": {"runbookUrl": "runbook.md#x"}}, "runbookUrl"),
        ({"prometheusRule": {"podRestartsPerHour": 0}}, "podRestartsPerHour"),
        ({"dashboards": {"enabled": "yes"}}, "enabled"),
        ({"dashboards": {"labels": {"bad key!": "x"}}}, "bad key!"),
    ],
)
def test_schema_refuses_bad_monitoring_values(values: dict[str, Any], message: str) -> None:
    result = template(values)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_crd_schemas_reject_misspelt_monitoring_fields() -> None:
    manifests = render(ALL_ON)
    monitor = copy.deepcopy(manifests.one("ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["scrapeInterval"] = monitor["spec"]["endpoints"][0].pop(
        "interval"
    )
    with pytest.raises(jsonschema.ValidationError, match="scrapeInterval"):
        crds.validate(monitor)
    rule = copy.deepcopy(manifests.one("PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "five minutes"
    with pytest.raises(jsonschema.ValidationError, match="five minutes"):
        crds.validate(rule)


def test_dashboard_config_maps_carry_the_sidecar_label_and_the_json_verbatim() -> None:
    maps = _dashboard_maps(render(ALL_ON))
    files = sorted(DASHBOARD_DIR.glob("*.json"))
    assert files and len(maps) == len(files)
    by_key = {key: (cm, value) for cm in maps for key, value in cm["data"].items()}
    for path in files:
        cm, text = by_key[path.name]
        assert json.loads(text) == json.loads(path.read_text())
        assert cm["metadata"]["annotations"] == {"grafana_folder": "Liftoff"}
        assert cm["metadata"]["name"].startswith(FULLNAME)


# --- the dashboard JSON --------------------------------------------------------------------

_DATASOURCE = {
    "type": "object",
    "required": ["type", "uid"],
    "properties": {"type": {"const": "prometheus"}, "uid": {"type": "string"}},
}
_GRID = {
    "type": "object",
    "required": ["h", "w", "x", "y"],
    "properties": {
        "h": {"type": "integer", "minimum": 1},
        "w": {"type": "integer", "minimum": 1, "maximum": 24},
        "x": {"type": "integer", "minimum": 0, "maximum": 23},
        "y": {"type": "integer", "minimum": 0},
    },
}
_TARGET = {
    "type": "object",
    "required": ["refId", "expr"],
    "properties": {
        "refId": {"type": "string", "pattern": "^[A-Z]+$"},
        "expr": {"type": "string", "minLength": 1},
        "legendFormat": {"type": "string"},
        "datasource": _DATASOURCE,
    },
}
# The basics of Grafana's dashboard JSON model (schemaVersion 39; grafana.com "JSON model" docs).
GRAFANA_DASHBOARD_SCHEMA = {
    "type": "object",
    "required": ["uid", "title", "schemaVersion", "panels", "templating", "time", "tags"],
    "properties": {
        "id": {"type": ["integer", "null"]},
        "uid": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,40}$"},
        "title": {"type": "string", "minLength": 1},
        "description": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "timezone": {"enum": ["", "browser", "utc"]},
        "editable": {"type": "boolean"},
        "graphTooltip": {"enum": [0, 1, 2]},
        "refresh": {"type": "string"},
        "schemaVersion": {"type": "integer", "minimum": 36},
        "version": {"type": "integer"},
        "time": {
            "type": "object",
            "required": ["from", "to"],
            "properties": {"from": {"type": "string"}, "to": {"type": "string"}},
        },
        "templating": {
            "type": "object",
            "required": ["list"],
            "properties": {
                "list": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "type"],
                        "properties": {
                            "name": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"},
                            "type": {"enum": ["query", "datasource", "custom", "constant"]},
                        },
                    },
                }
            },
        },
        "panels": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "type", "title", "gridPos"],
                "properties": {
                    "id": {"type": "integer", "minimum": 1},
                    "type": {"enum": ["row", "timeseries", "stat", "gauge", "table", "bargauge"]},
                    "title": {"type": "string", "minLength": 1},
                    "gridPos": _GRID,
                    "datasource": _DATASOURCE,
                    "targets": {"type": "array", "items": _TARGET},
                    "fieldConfig": {
                        "type": "object",
                        "required": ["defaults", "overrides"],
                        "properties": {
                            "defaults": {"type": "object"},
                            "overrides": {"type": "array"},
                        },
                    },
                },
            },
        },
    },
}


def _dashboards() -> dict[str, dict[str, Any]]:
    return {
        path.name: json.loads(path.read_text()) for path in sorted(DASHBOARD_DIR.glob("*.json"))
    }


def _queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and of every label_values() variable query."""
    found = [
        (f"panel {panel['id']} {target['refId']}", target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else ""
            selector = re.fullmatch(r"label_values\((.+),\s*[a-zA-Z_]+\)", query)
            assert selector, f"variable {variable['name']}: not label_values(<selector>, label)"
            found.append((f"variable {variable['name']}", selector.group(1)))
    return found


def _promql(expr: str) -> str:
    for variable, duration in GRAFANA_INTERVALS.items():
        expr = expr.replace(variable, duration)
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    assert "$" not in unquoted, f"a Grafana variable outside a label value: {expr}"
    return expr


_NOT_METRICS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
_NOT_METRICS |= {"and", "or", "unless", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (strings, matchers, ranges, grouping removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for found in re.finditer(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        if text[found.end() :].lstrip().startswith("("):
            continue  # a function call
        if found.group(0).lower() not in _NOT_METRICS:
            names.add(found.group(0))
    return names


def test_metric_name_extraction() -> None:
    expr = 'sum by (le) (rate(a_bucket{x="b c"}[5m])) / on (y) group_left b_total offset 1h > 1e3'
    assert metric_names(expr) == {"a_bucket", "b_total"}
    assert metric_names('histogram_quantile(0.99, sum(rate(c{le="+Inf"}[1m])))') == {"c"}


@pytest.mark.parametrize("name", sorted(_dashboards()))
def test_dashboard_fits_grafana_dashboard_schema(name: str) -> None:
    dashboard = _dashboards()[name]
    jsonschema.Draft7Validator(GRAFANA_DASHBOARD_SCHEMA).validate(dashboard)
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"panel {panel['id']} overflows the 24-column grid"
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), f"panel {panel['id']}: refIds are unique"
        if panel["type"] != "row":
            assert refs, f"panel {panel['id']} has no query"
    cells = {}
    for panel in panels:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"panels {cells[(x, y)]} and {panel['id']} overlap"
                cells[(x, y)] = panel["id"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    used = set(re.findall(r"\$\{?([a-zA-Z_][a-zA-Z0-9_]*)", json.dumps(panels)))
    assert used - {v.lstrip("$") for v in GRAFANA_INTERVALS} <= variables


def test_grafana_schema_check_can_fail() -> None:
    (dashboard,) = _dashboards().values()
    broken = copy.deepcopy(dashboard)
    broken["panels"][1]["gridPos"].pop("w")
    with pytest.raises(jsonschema.ValidationError, match="'w' is a required property"):
        jsonschema.Draft7Validator(GRAFANA_DASHBOARD_SCHEMA).validate(broken)


@pytest.mark.parametrize("name", sorted(_dashboards()))
def test_every_dashboard_query_parses_with_promtool(name: str, tmp_path: Path) -> None:
    queries = _queries(_dashboards()[name])
    rules = [
        {"record": f"dashboard:query_{i}", "expr": _promql(expr)}
        for i, (_, expr) in enumerate(queries)
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": name, "rules": rules}]}))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_promtool_parse_check_can_fail(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    rules = [
        {"record": "dashboard:bad", "expr": "sum by (route (rate(liftoff_requests_total[5m]))"}
    ]
    path.write_text(yaml.safe_dump({"groups": [{"name": "bad", "rules": rules}]}))
    assert run_promtool("check", "rules", str(path)).returncode != 0


async def test_dashboards_name_only_series_the_gateway_exports(simulator) -> None:
    exported = exported_series_names(await scrape_after_traffic(simulator.url))
    for name, dashboard in _dashboards().items():
        for where, expr in _queries(dashboard):
            unknown = metric_names(_promql(expr)) - exported
            assert not unknown, f"{name} {where}: {sorted(unknown)} not exported by the gateway"


# Labels Prometheus (the ServiceMonitor's target) adds to every scraped series.
_TARGET_LABELS = {"namespace", "job", "pod", "service", "endpoint", "instance", "container"}


def _declared_labels() -> dict[str, set[str]]:
    """Sample name -> the label names the gateway declares for it (histogram buckets add le)."""
    out: dict[str, set[str]] = {}
    for metric in vars(Metrics()).values():
        if isinstance(metric, MetricWrapperBase):
            names = set(metric._labelnames)
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
            for suffix in suffixes.get(metric._type, [""]):
                out[metric._name + suffix] = names | ({"le"} if suffix == "_bucket" else set())
    return out


def _grouping_problems(where: str, expr: str, declared: dict[str, set[str]]) -> list[str]:
    carried = set(_TARGET_LABELS)
    for name in metric_names(expr):
        carried |= declared.get(name, set())
    problems = []
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        unknown = {label.strip() for label in group.split(",") if label.strip()} - carried
        if unknown:
            problems.append(f"{where}: grouped by {sorted(unknown)}, not labels of its series")
    return problems


def test_groupings_use_labels_the_series_carry() -> None:
    """Every by (...) of the dashboards and alert rules names labels its series have (tokens and
    cost by key and model need the key label on them)."""
    declared = _declared_labels()
    assert declared["liftoff_cost_usd_total"] == {"key", "model"}
    problems = [
        problem
        for name, dashboard in _dashboards().items()
        for where, expr in _queries(dashboard)
        for problem in _grouping_problems(f"{name} {where}", _promql(expr), declared)
    ]
    for group in render(ALL_ON).one("PrometheusRule")["spec"]["groups"]:
        for rule in group["rules"]:
            where = rule.get("alert") or rule["record"]
            problems += _grouping_problems(where, rule["expr"], declared)
    assert not problems, "\n".join(problems)
    assert _grouping_problems("x", "sum by (tenant) (liftoff_cost_usd_total)", declared)


def test_dashboard_covers_the_issue_topics() -> None:
    text = json.dumps(_dashboards())
    for series in (
        "liftoff_requests_total",  # requests and errors by route and status
        "liftoff_overhead_seconds_bucket",  # added latency percentiles
        "liftoff_time_to_first_token_seconds_bucket",  # TTFT percentiles
        "liftoff_tokens_total",
        "liftoff_cost_usd_total",
        "sum by (key, model) (rate(liftoff_tokens_total",  # tokens and cost by key and model
        "sum by (key, model) (rate(liftoff_cost_usd_total",
        "liftoff_cache_results_total",  # hit ratio
        "liftoff_upstream_retries_total",
        "liftoff_circuit_state",
        "liftoff_state_degraded",  # Redis health
        "liftoff_budget_soft_threshold_total",  # budget consumption
    ):
        assert series in text, series
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le) (rate(liftoff_overhead" in text


# --- the stack -----------------------------------------------------------------------------


def _release_values(overrides: dict[str, str] | None) -> dict[str, Any]:
    run = run_program("prod", overrides)
    (release,) = [
        r
        for r in run.resources
        if r.type.startswith("kubernetes:helm.sh/v3:Release")
        and Path(str(r.inputs.get("chart"))).resolve() == CHART_DIR
    ]
    return release.inputs["values"]


def test_stack_setting_monitoring_turns_on_all_three_parts() -> None:
    values = _release_values({"liftoff:monitoring": "true"})
    assert all(values[part]["enabled"] is True for part in ALL_ON)
    manifests = render(values)
    validate_all(manifests)
    assert {"ServiceMonitor", "PrometheusRule"} <= manifests.kinds()
    assert _dashboard_maps(manifests)


def test_stack_monitoring_is_off_by_default() -> None:
    values = _release_values(None)
    assert not any(values[part]["enabled"] for part in ALL_ON)
    manifests = render(values)
    assert not {"ServiceMonitor", "PrometheusRule"} & manifests.kinds()

"""Every alert of the chart's PrometheusRule under `promtool test rules`: series in, alert out.

The rules are the rendered PrometheusRule's `spec.groups` (real helm); each alert gets a case
that must fire, with its exact labels and annotations, and one that must stay quiet."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.charts.chart import FULLNAME, NAMESPACE, REPO_ROOT, render
from tests.fixtures.promtool import run_promtool

RUNBOOK_URL = "https://github.com/liftoff/liftoff/blob/main/docs/runbook.md"
RULE_VALUES = {"prometheusRule": {"enabled": True, "monthlyBudgetUsd": 500}}
# The ServiceMonitor's job (the Service name) and namespace: what the rules select on.
GW = f'job="{FULLNAME}",namespace="{NAMESPACE}"'
POD = f"{FULLNAME}-7d9f8b6c5d-x2k4q"


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    extra = "".join(f',{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{GW}{extra}}}", "values": values}


def buckets(name: str, bounds: dict[str, str], **labels: str) -> list[dict[str, str]]:
    return [series(f"{name}_bucket", values, le=le, **labels) for le, values in bounds.items()]


@dataclass(frozen=True)
class AlertCase:
    eval_time: str
    firing: list[dict[str, str]]
    quiet: list[dict[str, str]]
    labels: dict[str, str]
    summary: str
    description: str
    interval: str = "1m"
    extra_labels: dict[str, str] = field(default_factory=dict)


API_OK = series("liftoff_requests_total", "0+98x20", route="chat", model="m", status="200")
# Readiness 503s while draining are not API errors: present in every case, they must not count.
DRAINING = series("liftoff_requests_total", "0+50x20", route="readyz", model="-", status="503")

CASES: dict[str, AlertCase] = {
    "LiftoffErrorRateHigh": AlertCase(
        eval_time="15m",
        firing=[
            API_OK,
            DRAINING,
            series("liftoff_requests_total", "0+2x20", route="chat", model="m", status="502"),
        ],
        quiet=[
            API_OK,
            DRAINING,
            series("liftoff_requests_total", "0+0x20", route="chat", model="m", status="502"),
        ],
        labels={"severity": "critical"},
        summary="Gateway 5xx ratio above the 0.01 SLO",
        description="2% of chat/completions requests answered 5xx over the last 5 minutes.",
    ),
    "LiftoffAddedLatencyHigh": AlertCase(
        eval_time="20m",
        firing=buckets(
            "liftoff_overhead_seconds",
            {"0.001": "0x30", "0.005": "0x30", "0.01": "0+10x30", "+Inf": "0+10x30"},
            route="chat",
        ),
        quiet=buckets(
            "liftoff_overhead_seconds",
            {"0.001": "0+10x30", "0.005": "0+10x30", "0.01": "0+10x30", "+Inf": "0+10x30"},
            route="chat",
        ),
        labels={"severity": "warning", "route": "chat"},
        summary="Gateway added latency (p99) above the 0.005s SLO",
        description="p99 of the time the gateway itself adds on route chat is 9.95ms.",
    ),
    "LiftoffTimeToFirstTokenHigh": AlertCase(
        eval_time="20m",
        firing=buckets(
            "liftoff_time_to_first_token_seconds",
            {"1": "0x30", "2.5": "0x30", "5": "0+10x30", "+Inf": "0+10x30"},
            model="m",
        ),
        quiet=buckets(
            "liftoff_time_to_first_token_seconds",
            {"1": "0+10x30", "2.5": "0+10x30", "5": "0+10x30", "+Inf": "0+10x30"},
            model="m",
        ),
        labels={"severity": "warning", "model": "m"},
        summary="Time to first token (p95) above the 2s SLO",
        description="p95 time to first token of m is 4.875s.",
    ),
    "LiftoffProvider429RateHigh": AlertCase(
        eval_time="15m",
        firing=[
            series("liftoff_requests_total", "0+100x20", route="chat", model="m", status="200"),
            series("liftoff_upstream_retries_total", "0+10x20", model="m", reason="429"),
        ],
        quiet=[
            series("liftoff_requests_total", "0+100x20", route="chat", model="m", status="200"),
            series("liftoff_upstream_retries_total", "0+10x20", model="m", reason="503"),
            series("liftoff_upstream_retries_total", "0+1x20", model="m", reason="429"),
        ],
        labels={"severity": "warning"},
        summary="The provider throttles the gateway (429)",
        description="Provider 429s retried: 10% of API requests over the last 5 minutes.",
    ),
    "LiftoffCircuitOpen": AlertCase(
        eval_time="8m",
        # Open, probing half-open, open again: a flapping breaker keeps the alert pending.
        firing=[series("liftoff_circuit_state", "0 0 2 1 2 1 2 1 2 1 2", model="m")],
        quiet=[
            series("liftoff_circuit_state", "0x10", model="m"),
            series("liftoff_circuit_state", "0 2 0 0 0 0 0 0 0 0 0", model="n"),
        ],
        labels={"severity": "critical", "model": "m"},
        summary="Circuit breaker open for a model",
        description=(
            "The breaker of m has been open in the last 3 minutes: its requests fail fast (503) "
            "or go to a fallback."
        ),
    ),
    "LiftoffRedisDegraded": AlertCase(
        eval_time="6m",
        firing=[
            series("liftoff_state_degraded", "0 1 1 1 1 1 1 1", pod="a"),
            series("liftoff_state_degraded", "0x7", pod="b"),
        ],
        quiet=[
            series("liftoff_state_degraded", "0 1 0 0 0 0 0 0", pod="a"),
            series("liftoff_state_degraded", "0x7", pod="b"),
        ],
        labels={"severity": "critical"},
        summary="Gateway running on local limits (Redis unreachable)",
        description=(
            "1 pod(s) report Redis unreachable: rate limits, budgets and the cache are per pod "
            "until it is back."
        ),
    ),
    "LiftoffCacheHitRatioCollapse": AlertCase(
        eval_time="470m",
        # 60% of cacheable lookups hit for 7 hours, then 10%.
        firing=[
            series("liftoff_cache_results_total", "0+60x420 25210+10x59", result="hit"),
            series("liftoff_cache_results_total", "0+40x420 16890+90x59", result="miss"),
            series("liftoff_cache_results_total", "0+500x480", result="bypass"),
        ],
        quiet=[
            series("liftoff_cache_results_total", "0+60x480", result="hit"),
            series("liftoff_cache_results_total", "0+40x480", result="miss"),
            series("liftoff_cache_results_total", "0+500x420 210500+5000x59", result="bypass"),
        ],
        labels={"severity": "warning"},
        summary="Cache hit ratio collapsed",
        description=(
            "The cache hit ratio of the last 15 minutes is 10%, under 0.5 times that of the last "
            "6 hours."
        ),
    ),
    "LiftoffBudgetBurnRateHigh": AlertCase(
        eval_time="420m",
        # Spend adds up over client keys: $0.006 a minute each is $259.20 in 30 days, under the
        # $500 budget alone, $518.40 for the two; $0.001 a minute each is not.
        firing=[
            series("liftoff_cost_usd_total", "0+0.006x480", key=key, model="m")
            for key in ("alice", "bob")
        ],
        quiet=[
            series("liftoff_cost_usd_total", "0+0.001x480", key=key, model="m")
            for key in ("alice", "bob")
        ],
        labels={"severity": "warning"},
        summary="Provider spend on course to pass the monthly budget of 500 USD",
        description="At the spend rate of the last 6 hours, a month costs 518.4 USD.",
    ),
    "LiftoffPodsRestarting": AlertCase(
        eval_time="120m",
        firing=[
            {
                "series": "kube_pod_container_status_restarts_total"
                f'{{namespace="{NAMESPACE}",pod="{POD}",container="gateway"}}',
                "values": "0x70 1x15 2x15 3x20",
            }
        ],
        quiet=[
            # The helm test pod and another release's pods are not the gateway's.
            {
                "series": "kube_pod_container_status_restarts_total"
                f'{{namespace="{NAMESPACE}",pod="{FULLNAME}-test-readyz",container="readyz"}}',
                "values": "0+1x120",
            },
            {
                "series": "kube_pod_container_status_restarts_total"
                f'{{namespace="other",pod="{POD}",container="gateway"}}',
                "values": "0+1x120",
            },
            {
                "series": "kube_pod_container_status_restarts_total"
                f'{{namespace="{NAMESPACE}",pod="{POD}",container="gateway"}}',
                "values": "0x70 1x50",
            },
        ],
        labels={"severity": "warning", "namespace": NAMESPACE, "pod": POD, "container": "gateway"},
        summary="Gateway pod restarting",
        description=f"{POD} restarted 3 times in the last hour.",
    ),
}


def _groups(values: dict[str, Any]) -> list[dict[str, Any]]:
    return render(values).one("PrometheusRule")["spec"]["groups"]


def _alerts(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "gateway-rules.yml"
    path.write_text(yaml.safe_dump({"groups": _groups(RULE_VALUES)}, sort_keys=False))
    return path


def test_rendered_rules_pass_promtool_check_rules(rules_file: Path) -> None:
    result = run_promtool("check", "rules", str(rules_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(CASES)} rules found" in result.stdout


def test_every_alert_has_a_promtool_case() -> None:
    assert set(_alerts(_groups(RULE_VALUES))) == set(CASES)


@pytest.mark.parametrize("alert", sorted(CASES))
def test_alert_fires_on_its_series_and_stays_quiet_otherwise(
    alert: str, rules_file: Path, tmp_path: Path
) -> None:
    case = CASES[alert]
    expected = {
        "exp_labels": {"alertname": alert, **case.labels},
        "exp_annotations": {
            "summary": case.summary,
            "description": case.description,
            "runbook_url": f"{RUNBOOK_URL}#{alert.lower()}",
        },
    }
    tests = [
        {
            "interval": case.interval,
            "input_series": input_series,
            "alert_rule_test": [
                {"eval_time": case.eval_time, "alertname": alert, "exp_alerts": exp_alerts}
            ],
        }
        for input_series, exp_alerts in ((case.firing, [expected]), (case.quiet, []))
    ]
    test_file = tmp_path / "test.yml"
    test_file.write_text(
        yaml.safe_dump(
            {"rule_files": [str(rules_file)], "evaluation_interval": "1m", "tests": tests},
            sort_keys=False,
        )
    )
    result = run_promtool("test", "rules", str(test_file))
    assert result.returncode == 0, (
        f"promtool test rules for {alert}:\n{result.stdout}{result.stderr}"
    )
    assert "SUCCESS" in result.stdout


def test_promtool_test_rules_fails_on_a_wrong_expectation(rules_file: Path, tmp_path: Path) -> None:
    case = CASES["LiftoffRedisDegraded"]
    test_file = tmp_path / "test.yml"
    test_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(rules_file)],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": "1m",
                        "input_series": case.firing,
                        "alert_rule_test": [
                            {"eval_time": case.eval_time, "alertname": "LiftoffRedisDegraded"}
                        ],
                    }
                ],
            }
        )
    )
    result = run_promtool("test", "rules", str(test_file))
    assert result.returncode != 0 and "LiftoffRedisDegraded" in result.stdout + result.stderr


def test_thresholds_follow_values() -> None:
    values = {
        "prometheusRule": {
            "enabled": True,
            "errorRatio": 0.2,
            "overheadP99Seconds": 0.05,
            "ttftP95Seconds": 7,
            "provider429Ratio": 0.3,
            "cacheHitRatioDropFraction": 0.25,
            "podRestartsPerHour": 9,
            "monthlyBudgetUsd": 1234,
        }
    }
    alerts = _alerts(_groups(values))
    assert re.search(r">\s*0\.2\s*$", alerts["LiftoffErrorRateHigh"]["expr"])
    assert re.search(r">\s*0\.05\s*$", alerts["LiftoffAddedLatencyHigh"]["expr"])
    assert re.search(r">\s*7\s*$", alerts["LiftoffTimeToFirstTokenHigh"]["expr"])
    assert re.search(r">\s*0\.3\s*$", alerts["LiftoffProvider429RateHigh"]["expr"])
    assert "< 0.25 *" in alerts["LiftoffCacheHitRatioCollapse"]["expr"]
    assert re.search(r">=\s*9\s*$", alerts["LiftoffPodsRestarting"]["expr"])
    assert alerts["LiftoffBudgetBurnRateHigh"]["expr"].count("> 1234") == 2


def test_budget_alert_defaults_to_the_gateway_global_budget_and_needs_one() -> None:
    from_config = {
        "prometheusRule": {"enabled": True},
        "config": {"budgets": {"global_monthly_usd": 800.0}},
    }
    assert "> 800" in _alerts(_groups(from_config))["LiftoffBudgetBurnRateHigh"]["expr"]
    without = _alerts(_groups({"prometheusRule": {"enabled": True}}))
    assert "LiftoffBudgetBurnRateHigh" not in without
    assert set(without) == set(CASES) - {"LiftoffBudgetBurnRateHigh"}


def _github_anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_has_a_runbook_paragraph() -> None:
    runbook = (REPO_ROOT / "docs" / "runbook.md").read_text()
    sections = dict(re.findall(r"^## (.+)\n\n((?:.+\n)+)", runbook, flags=re.MULTILINE))
    anchors = {_github_anchor(h): h for h in sections}
    for alert, rule in _alerts(_groups(RULE_VALUES)).items():
        fragment = rule["annotations"]["runbook_url"].split("#", 1)[1]
        assert fragment in anchors, f"docs/runbook.md has no section for {alert}"
        assert len(sections[anchors[fragment]].split()) >= 40, f"{alert}: runbook section too thin"

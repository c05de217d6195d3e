"""The rendered chart passes checkov's Kubernetes hardening checks (checkov from PyPI, installed
by `scripts/ensure-checkov` into .tools/checkov-venv): with its default values and with the
values the prod stack passes. A failed check is fixed in the chart or skipped by its id with its
reason (charts/gateway/.checkov.yaml, or a checkov.io/skipN annotation on one resource), and
every skip is still needed. A missing checkov fails, never skips."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.mocking import ProgramRun
from tests.charts.chart import CHART_DIR, REPO_ROOT, template
from tests.charts.test_stack_program import _gateway_release_values

CONFIG = CHART_DIR / ".checkov.yaml"
# Skipped only because the default values run a tag: the prod render must pass them.
DEFAULT_VALUES_ONLY = ("CKV_K8S_43", "CKV_K8S_15")
SKIP_LINE = re.compile(r"^\s*-\s*(?P<id>CKV2?_K8S_\d+)\s*(?:#\s*(?P<reason>.*?))?\s*$")


def checkov_binary() -> str:
    local = REPO_ROOT / ".tools" / "checkov-venv" / "bin" / "checkov"
    if local.is_file():
        return str(local)
    found = shutil.which("checkov")
    if found:
        return found
    pytest.fail(
        "checkov not found at .tools/checkov-venv/bin/checkov or on PATH: run "
        "`scripts/ensure-checkov` (or `make checkov`), which installs it from PyPI",
        pytrace=False,
    )


def _rendered(values: dict[str, Any] | None) -> str:
    result = template(values)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory, prod_run: ProgramRun) -> Path:
    """The chart rendered with its default values and with prod's, one file each."""
    folder = tmp_path_factory.mktemp("rendered")
    prod_values, _ = _gateway_release_values("prod", prod_run)
    (folder / "default.yaml").write_text(_rendered(None))
    (folder / "prod.yaml").write_text(_rendered(prod_values))
    return folder


def _scan_command(folder: Path, *args: str) -> list[str]:
    return [checkov_binary(), "--directory", str(folder), "--output", "json", *args]


def _report(proc: subprocess.Popen[str]) -> dict[str, Any]:
    stdout, stderr = proc.communicate(timeout=300)
    # Exit 1 means failed checks: the report says which.
    assert proc.returncode in (0, 1), f"checkov failed ({proc.returncode}):\n{stderr[-3000:]}"
    report = json.loads(stdout)
    assert isinstance(report, dict) and report["check_type"] == "kubernetes", report
    return report


@pytest.fixture(scope="module")
def scans(renders: Path) -> dict[str, dict[str, Any]]:
    """Both scans of the renders, run at once (each is a checkov start of seconds):
    - "config": checkov as `make chart-scan` runs it, with the chart's config and its skips;
    - "without_skips": the same checks, the config's skips left out (resource annotations
      still apply)."""
    commands = {
        "config": _scan_command(renders, "--config-file", str(CONFIG)),
        "without_skips": _scan_command(renders, "--framework", "kubernetes", "--skip-download"),
    }
    running = {
        name: subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, command in commands.items()
    }
    try:
        return {name: _report(proc) for name, proc in running.items()}
    finally:
        for proc in running.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def scan(scans: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return scans["config"]


@pytest.fixture(scope="module")
def scan_without_skips(scans: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return scans["without_skips"]


def _failed(report: dict[str, Any]) -> list[dict[str, Any]]:
    return report.get("results", {}).get("failed_checks", [])


def _where(check: dict[str, Any]) -> str:
    return f"{check['check_id']} {check['file_path']} {check['resource']}: {check['check_name']}"


def _config_skips() -> dict[str, str]:
    """The config's skipped check ids, each with the reason written after it."""
    listed = yaml.safe_load(CONFIG.read_text())["skip-check"]
    reasons = {
        m["id"]: m["reason"] or ""
        for line in CONFIG.read_text().splitlines()
        if (m := SKIP_LINE.match(line))
    }
    assert sorted(listed) == sorted(reasons), "each skip-check entry on its own line"
    return reasons


def test_both_renders_are_scanned_in_full(scan: dict[str, Any]) -> None:
    summary = scan["summary"]
    assert summary["parsing_errors"] == 0
    files = {c["file_path"] for c in scan["results"]["passed_checks"]}
    assert files == {"/default.yaml", "/prod.yaml"}
    resources = {c["resource"].split(".")[0] for c in scan["results"]["passed_checks"]}
    assert {"Deployment", "Pod", "Service", "ServiceAccount", "ConfigMap"} <= resources
    assert summary["passed"] >= 300, summary


def test_no_check_fails_on_the_rendered_chart(scan: dict[str, Any]) -> None:
    failed = _failed(scan)
    high = [c for c in failed if str(c.get("severity")).upper() in ("HIGH", "CRITICAL")]
    assert not high, [_where(c) for c in high]
    # Open-source checks carry no severity offline: every failure is fixed or skipped.
    assert not failed, [_where(c) for c in failed]


def test_every_skip_has_a_reason() -> None:
    for check_id, reason in _config_skips().items():
        assert len(reason) >= 20, f"{check_id} is skipped without a reason in {CONFIG}"


def test_every_resource_suppression_has_a_reason(scan: dict[str, Any]) -> None:
    suppressed = scan["results"]["skipped_checks"]
    assert suppressed, "the helm test pod's suppressions apply"
    for check in suppressed:
        assert len(check.get("check_result", {}).get("suppress_comment", "")) >= 20, _where(check)


def test_every_config_skip_is_still_needed(scan_without_skips: dict[str, Any]) -> None:
    failing = {c["check_id"] for c in _failed(scan_without_skips)}
    stale = sorted(set(_config_skips()) - failing)
    assert not stale, f"{stale} pass on the rendered chart now: drop them from {CONFIG}"


def test_default_values_only_skips_pass_on_prod(scan_without_skips: dict[str, Any]) -> None:
    assert set(DEFAULT_VALUES_ONLY) <= set(_config_skips())
    on_prod = [
        c
        for c in _failed(scan_without_skips)
        if c["file_path"] == "/prod.yaml" and c["check_id"] in DEFAULT_VALUES_ONLY
    ]
    assert not on_prod, [_where(c) for c in on_prod]

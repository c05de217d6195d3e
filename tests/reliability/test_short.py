"""The reliability run's short version (`python -m reliability --short`), for real: HAProxy in
front of two `python -m app` processes on one Redis/Valkey server, the simulator as a separate
provider process, a mixed open-loop load through every fault phase (seconds each), then four
gateways for accounting under concurrency. A missing haproxy fails here, it never skips."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from reliability.__main__ import run
from reliability.faults import PHASES
from reliability.report import write

PHASE_FIELDS = (
    "sent", "succeeded", "failed", "lost", "p50_ms", "p99_ms", "retries", "circuit_transitions",
)  # fmt: skip
PHASE_NAMES = [name for name, _ in PHASES]


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result = run(short=True)
    write(tmp_path_factory.mktemp("reliability") / "report.json", result)
    return result


def test_report_has_every_phase_with_its_figures(
    result: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    assert list(result["phases"]) == PHASE_NAMES
    for name, phase in result["phases"].items():
        missing = [f for f in PHASE_FIELDS if f not in phase]
        assert not missing, f"{name} lacks {missing}"
        assert phase["sent"] >= 100, f"{name}: the load barely ran ({phase['sent']} requests)"
        assert phase["succeeded"] + sum(phase["failed"].values()) + phase["lost"] == phase["sent"]
    path = next(Path(tmp_path_factory.getbasetemp()).glob("reliability*/report.json"))
    assert json.loads(path.read_text())["phases"].keys() == result["phases"].keys()


@pytest.mark.parametrize("phase", PHASE_NAMES)
def test_no_request_lost_and_no_unexplained_error(result: dict[str, Any], phase: str) -> None:
    entry = result["phases"][phase]
    assert entry["lost"] == 0, entry["examples"]
    assert entry["unexplained"] == 0, (entry["by_cause"], entry["examples"])


@pytest.mark.parametrize("phase", PHASE_NAMES)
def test_phase_checks_hold(result: dict[str, Any], phase: str) -> None:
    """Each phase's own promise: limits through the Redis outage and recovery, retries within
    budget and after Retry-After, the circuit opening and closing, no hang past the timeouts,
    cut streams ending with an error event and billed only for what was generated, a rolling
    restart without a failed request."""
    entry = result["phases"][phase]
    assert entry["problems"] == [], (entry["checks"], entry["by_cause"])


def test_faults_really_happened(result: dict[str, Any]) -> None:
    """The phases did their harm: without it the checks above would pass on a quiet run."""
    phases = result["phases"]
    assert phases["redis-kill"]["checks"]["states_during_outage"].get("degraded", 0) > 0
    assert (
        phases["redis-kill"]["checks"]["limited_key"]["accepted"]
        < (phases["redis-kill"]["checks"]["limited_key"]["sent"])
    )
    assert phases["429-storm"]["retries"] > 0
    assert phases["429-storm"]["failed"].get("429", 0) > 0
    assert phases["5xx"]["circuit_transitions"] >= 2
    assert phases["hung-upstream"]["checks"]["timeouts_504"] > 0
    assert phases["stream-cut"]["failed"].get("200-error-event", 0) > 0
    assert len(phases["rolling-restart"]["checks"]["drain_s"]) == 2


@pytest.mark.parametrize("check", ["rpm", "budget", "usage"])
def test_accounting_under_concurrency(result: dict[str, Any], check: str) -> None:
    """Four gateways on one Redis, bursts at one key: rpm never past the limiter's bound,
    spend within the budget plus one request's worst case, /v1/usage equal to the responses'
    usage."""
    entry = result["accounting"][check]
    assert entry["problems"] == [], entry

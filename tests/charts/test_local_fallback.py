"""The chart tells each pod how many replicas share the limits when Redis is down
(`limits.local_fallback_replicas`, mode `local`): the smallest replica count it can run with,
unless the config sets it; the schema refuses values the gateway would."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import load_config
from tests.charts.chart import Manifests, lint, render, template

ENV = "LIFTOFF__LIMITS__LOCAL_FALLBACK_REPLICAS"


def loaded_replicas(manifests: Manifests, tmp_path: Path) -> int:
    """What the gateway reads from the rendered ConfigMap and env."""
    config_file = tmp_path / "config.yaml"
    config_file.write_text(manifests.one("ConfigMap")["data"]["config.yaml"])
    env = {**manifests.env, "LIFTOFF_CONFIG": str(config_file)}
    return load_config(env=env).limits.local_fallback_replicas


@pytest.mark.parametrize(
    ("values", "replicas"),
    [
        ({}, 2),  # the HPA's default minReplicas
        ({"autoscaling": {"minReplicas": 4, "maxReplicas": 12}}, 4),
        ({"autoscaling": {"enabled": False}, "replicaCount": 3}, 3),
        ({"autoscaling": {"enabled": False}, "replicaCount": 1}, 1),
    ],
)
def test_each_pod_learns_the_smallest_replica_count(
    values: dict, replicas: int, tmp_path: Path
) -> None:
    manifests = render(values)
    assert manifests.env[ENV] == str(replicas)
    assert loaded_replicas(manifests, tmp_path) == replicas


def test_the_config_s_own_value_wins(tmp_path: Path) -> None:
    manifests = render({"config": {"limits": {"local_fallback_replicas": 6}}})
    assert ENV not in manifests.env
    assert loaded_replicas(manifests, tmp_path) == 6


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"local_fallback_replicas": 0}, "at '/config/limits/local_fallback_replicas'"),
        ({"rpm_burst_fraction": 1.5}, "at '/config/limits/rpm_burst_fraction'"),
        ({"tpm_burst_fraction": 0}, "at '/config/limits/tpm_burst_fraction'"),
    ],
)
def test_the_schema_refuses_what_the_limiter_would(limits: dict, message: str) -> None:
    values = {"config": {"limits": limits}}
    for result in (template(values), lint(values)):
        assert result.returncode != 0
        assert message in result.stderr + result.stdout

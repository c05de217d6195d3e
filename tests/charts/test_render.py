"""The chart lints and renders with its defaults and with every optional part on; every rendered
object is valid for Kubernetes 1.33 (built-in kinds) or for its CRD (VPA, TargetGroupBinding,
ServiceMonitor, PrometheusRule)."""

from __future__ import annotations

import copy

import jsonschema
import kubernetes_validate
import pytest

from tests.charts import crds, sample_values
from tests.charts.chart import CHART_DIR, FULLNAME, lint, render, run_helm
from tests.charts.validation import KUBERNETES_VERSION, validate_all

DEFAULT_KINDS = {
    "ConfigMap",
    "Deployment",
    "HorizontalPodAutoscaler",
    "NetworkPolicy",
    "Pod",  # the helm test hook
    "PodDisruptionBudget",
    "Service",
    "ServiceAccount",
}


def test_kubernetes_validate_supports_the_target_version() -> None:
    versions = kubernetes_validate.utils.all_versions()
    assert any(v.startswith("1.33") for v in versions), versions


@pytest.mark.parametrize(
    "values", [None, sample_values.everything_on()], ids=["defaults", "all-on"]
)
def test_helm_lint_strict_passes(values: dict | None) -> None:
    result = lint(values)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_defaults_render_the_core_objects_only() -> None:
    manifests = render()
    assert manifests.kinds() == DEFAULT_KINDS
    assert all(obj["metadata"]["name"].startswith(FULLNAME) for obj in manifests)
    validate_all(manifests)


def test_everything_on_renders_vpa_and_target_group_binding_and_all_validate() -> None:
    manifests = render(sample_values.everything_on())
    assert manifests.kinds() == DEFAULT_KINDS | {
        "VerticalPodAutoscaler",
        "TargetGroupBinding",
        "ServiceMonitor",
        "PrometheusRule",
    }
    validate_all(manifests)


def test_crd_validation_rejects_a_misspelt_field() -> None:
    tgb = copy.deepcopy(render(sample_values.everything_on()).one("TargetGroupBinding"))
    crds.validate(tgb)
    tgb["spec"]["targetGroupArn"] = tgb["spec"].pop("targetGroupARN")
    with pytest.raises(jsonschema.ValidationError, match="targetGroupArn"):
        crds.validate(tgb)


def test_crd_validation_rejects_an_unknown_vpa_mode() -> None:
    vpa = copy.deepcopy(render(sample_values.everything_on()).one("VerticalPodAutoscaler"))
    vpa["spec"]["updatePolicy"]["updateMode"] = "Sometimes"
    with pytest.raises(jsonschema.ValidationError, match="Sometimes"):
        crds.validate(vpa)


def test_kubernetes_schema_validation_is_strict() -> None:
    deployment = copy.deepcopy(render().one("Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_notes_explain_timings_and_the_readiness_gate_label() -> None:
    result = run_helm(
        "install",
        "gw",
        str(CHART_DIR),
        "--namespace",
        "liftoff",
        "--dry-run=client",
        "--set",
        f"targetGroupBinding.targetGroupArn={sample_values.TARGET_GROUP_ARN}",
    )
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert (
        "preStop sleep 20s + graceful shutdown 120s < terminationGracePeriodSeconds 150s" in notes
    )
    assert "elbv2.k8s.aws/pod-readiness-gate-inject=enabled" in notes
    assert "helm test gw -n liftoff" in notes

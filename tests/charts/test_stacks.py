"""The values the stack's pure values function builds for dev, staging and prod render with the
real chart into valid objects that carry each stack's knobs: infra and chart cannot drift apart."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from infra.settings import StackSettings, load_stack_file
from infra.timings import ShutdownTimings
from infra.workload import READINESS_GATE_LABEL, WorkloadRefs, gateway_values
from tests.charts.chart import Manifests, lint, render, template
from tests.charts.validation import validate_all

STACKS = ("dev", "staging", "prod")
SENTINEL_API_KEY = "sk-SENTINEL-upstream-5e1f0b"
SENTINEL_CLIENT_KEY = "lk-SENTINEL-client-0c77d2"


def stack_values(stack: str, overrides: dict[str, str] | None = None) -> tuple[StackSettings, dict]:
    settings = load_stack_file(stack, overrides)
    return settings, gateway_values(settings, WorkloadRefs.placeholder(settings))


@pytest.fixture(scope="module", params=STACKS)
def stack(request: pytest.FixtureRequest) -> tuple[str, StackSettings, dict[str, Any], Manifests]:
    settings, values = stack_values(request.param)
    # helm checks the chart's kubeVersion constraint against the stack's EKS version.
    return request.param, settings, values, render(values, f"{settings.kubernetes_version}.0")


def test_helm_lint_strict_passes_for_each_stack(stack: tuple) -> None:
    name, _, values, _ = stack
    result = lint(values)
    assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"


def test_every_object_of_each_stack_is_valid(stack: tuple) -> None:
    _, settings, _, manifests = stack
    validate_all(manifests, f"{settings.kubernetes_version}.0")
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "HorizontalPodAutoscaler",
        "TargetGroupBinding",
    } <= (manifests.kinds())


def test_horizontal_knob_reaches_the_hpa(stack: tuple) -> None:
    _, settings, _, manifests = stack
    hpa = manifests.one("HorizontalPodAutoscaler")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (
        settings.app_min_replicas,
        settings.app_max_replicas,
    )
    targets = {
        m["resource"]["name"]: m["resource"]["target"]["averageUtilization"] for m in hpa["metrics"]
    }
    assert targets.get("cpu") == settings.hpa_cpu_target
    assert targets.get("memory") == settings.hpa_memory_target
    assert "replicas" not in manifests.one("Deployment")["spec"]


def test_vertical_knob_reaches_the_vpa(stack: tuple) -> None:
    _, settings, _, manifests = stack
    vpas = manifests.of_kind("VerticalPodAutoscaler")
    if settings.vpa_mode == "Off":
        assert not vpas
        return
    (vpa,) = vpas
    assert vpa["spec"]["updatePolicy"]["updateMode"] == settings.vpa_mode
    (policy,) = vpa["spec"]["resourcePolicy"]["containerPolicies"]
    assert policy["minAllowed"] == {"cpu": settings.vpa_min_cpu, "memory": settings.vpa_min_memory}
    assert policy["maxAllowed"] == {"cpu": settings.vpa_max_cpu, "memory": settings.vpa_max_memory}
    assert "cpu" not in policy["controlledResources"], "the HPA scales on CPU"


def test_resources_reach_the_container(stack: tuple) -> None:
    _, settings, _, manifests = stack
    resources = manifests.container["resources"]
    assert resources["requests"] == {
        "cpu": settings.pod_cpu_request,
        "memory": settings.pod_memory_request,
    }
    assert resources["limits"]["memory"] == settings.pod_memory_limit


def test_shutdown_timings_match_the_stack(stack: tuple) -> None:
    _, settings, _, manifests = stack
    timings = ShutdownTimings.from_settings(settings)
    sleep_s = manifests.container["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace_s = manifests.pod_spec["terminationGracePeriodSeconds"]
    graceful_s = int(manifests.env["LIFTOFF__SERVER__GRACEFUL_SHUTDOWN_S"])
    keepalive_s = int(manifests.env["LIFTOFF__SERVER__KEEPALIVE_TIMEOUT_S"])
    assert sleep_s == timings.pre_stop_sleep_s and 15 <= sleep_s <= 30
    assert graceful_s == timings.graceful_shutdown_s
    assert grace_s == timings.termination_grace_period_s > sleep_s + graceful_s
    assert keepalive_s == timings.server_keepalive_s > timings.alb_idle_timeout_s
    assert timings.deregistration_delay_s > sleep_s + settings.longest_stream_seconds


def test_aws_wiring_of_each_stack(stack: tuple) -> None:
    _, settings, _, manifests = stack
    refs = WorkloadRefs.placeholder(settings)
    assert manifests.one("TargetGroupBinding")["spec"]["targetGroupARN"] == refs.target_group_arn
    sa = manifests.one("ServiceAccount")
    assert (
        sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == refs.service_account_role_arn
    )
    assert manifests.env["AWS_REGION"] == settings.region
    assert manifests.env["LIFTOFF_REDIS_URL"].startswith("rediss://")
    policy = manifests.one("NetworkPolicy")["spec"]
    assert policy["ingress"][0]["from"] == [{"ipBlock": {"cidr": settings.vpc_cidr}}]
    assert manifests.container["image"] == (
        f"{refs.image_repository}:{refs.image_tag}@{refs.image_digest}"
    )


def test_pdb_only_where_it_cannot_block_drains(stack: tuple) -> None:
    _, settings, _, manifests = stack
    pdbs = manifests.of_kind("PodDisruptionBudget")
    if settings.app_min_replicas > 1:
        (pdb,) = pdbs
        assert pdb["spec"]["minAvailable"] < settings.app_min_replicas
    else:
        assert not pdbs


def test_namespace_gets_the_readiness_gate_label() -> None:
    # The Workload component creates the namespace with this label; the controller then injects
    # the readiness gate so rollouts wait for healthy targets.
    assert READINESS_GATE_LABEL == {"elbv2.k8s.aws/pod-readiness-gate-inject": "enabled"}


@pytest.mark.parametrize(
    ("overrides", "check"),
    [
        (
            {
                "liftoff:appMinReplicas": "5",
                "liftoff:appMaxReplicas": "9",
                "liftoff:hpaCpuTarget": "45",
            },
            lambda m: (
                m.one("HorizontalPodAutoscaler")["spec"]["minReplicas"] == 5
                and m.one("HorizontalPodAutoscaler")["spec"]["maxReplicas"] == 9
                and m.one("HorizontalPodAutoscaler")["spec"]["metrics"][0]["resource"]["target"][
                    "averageUtilization"
                ]
                == 45
            ),
        ),
        (
            {"liftoff:vpaMode": "Recreate", "liftoff:vpaMaxMemory": "3Gi"},
            lambda m: (
                m.one("VerticalPodAutoscaler")["spec"]["updatePolicy"]["updateMode"] == "Recreate"
                and m.one("VerticalPodAutoscaler")["spec"]["resourcePolicy"]["containerPolicies"][
                    0
                ]["maxAllowed"]["memory"]
                == "3Gi"
            ),
        ),
        (
            {
                "liftoff:podCpuRequest": "750m",
                "liftoff:podMemoryRequest": "768Mi",
                "liftoff:podMemoryLimit": "1536Mi",
            },
            lambda m: (
                m.container["resources"]
                == {
                    "requests": {"cpu": "750m", "memory": "768Mi"},
                    "limits": {"memory": "1536Mi"},
                }
            ),
        ),
        (
            {"liftoff:hpaMemoryTarget": "80"},
            lambda m: (
                {x["resource"]["name"] for x in m.one("HorizontalPodAutoscaler")["spec"]["metrics"]}
                == {"cpu", "memory"}
                and not m.of_kind("VerticalPodAutoscaler")
            ),
        ),
    ],
    ids=["hpa", "vpa", "resources", "hpa-memory"],
)
def test_changing_a_stack_knob_changes_the_objects(overrides: dict[str, str], check) -> None:
    _, values = stack_values("staging", overrides)
    manifests = render(values)
    assert check(manifests)
    validate_all(manifests)


@pytest.mark.parametrize("stack_name", STACKS)
def test_no_secret_value_reaches_any_rendered_object(stack_name: str) -> None:
    client_keys = json.dumps([{"name": "ci", "key": SENTINEL_CLIENT_KEY}])
    settings, values = stack_values(
        stack_name, {"liftoff:llmApiKey": SENTINEL_API_KEY, "liftoff:clientKeys": client_keys}
    )
    assert settings.llm_api_key is not None
    assert settings.llm_api_key.get_secret_value() == SENTINEL_API_KEY
    rendered = template(values)
    assert rendered.returncode == 0, rendered.stderr
    text = rendered.stdout + yaml.safe_dump(values)
    assert SENTINEL_API_KEY not in text
    assert SENTINEL_CLIENT_KEY not in text

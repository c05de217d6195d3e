"""The horizontal and vertical knobs (and resources, replicas, image) reach the rendered objects."""

from __future__ import annotations

import pytest

from tests.charts import sample_values
from tests.charts.chart import FULLNAME, render, template


def test_hpa_min_max_and_cpu_target_follow_values() -> None:
    manifests = render(
        {"autoscaling": {"minReplicas": 4, "maxReplicas": 17, "targetCPUUtilizationPercentage": 55}}
    )
    hpa = manifests.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": FULLNAME,
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (4, 17)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"] == {
        "name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": 55},
    }


def test_hpa_memory_target_adds_a_second_metric() -> None:
    hpa = render({"autoscaling": {"targetMemoryUtilizationPercentage": 80}}).one(
        "HorizontalPodAutoscaler"
    )
    targets = {m["resource"]["name"]: m["resource"]["target"] for m in hpa["spec"]["metrics"]}
    assert targets == {
        "cpu": {"type": "Utilization", "averageUtilization": 70},
        "memory": {"type": "Utilization", "averageUtilization": 80},
    }


def test_hpa_behavior_has_stabilisation_windows_and_policies() -> None:
    behavior = render().one("HorizontalPodAutoscaler")["spec"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert behavior["scaleUp"]["policies"] and behavior["scaleDown"]["policies"]
    custom = {
        "scaleDown": {
            "stabilizationWindowSeconds": 900,
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}],
        }
    }
    behavior = render({"autoscaling": {"behavior": custom}}).one("HorizontalPodAutoscaler")["spec"][
        "behavior"
    ]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 900
    assert {"type": "Pods", "value": 1, "periodSeconds": 120} in behavior["scaleDown"]["policies"]


def test_no_replicas_field_while_the_hpa_owns_the_count() -> None:
    manifests = render({"replicaCount": 7})
    assert "replicas" not in manifests.one("Deployment")["spec"]
    assert manifests.of_kind("HorizontalPodAutoscaler")


def test_replica_count_is_used_when_the_hpa_is_off() -> None:
    manifests = render({"autoscaling": {"enabled": False}, "replicaCount": 3})
    assert manifests.one("Deployment")["spec"]["replicas"] == 3
    assert not manifests.of_kind("HorizontalPodAutoscaler")


def test_resources_follow_values() -> None:
    resources = {"requests": {"cpu": "1500m", "memory": "1Gi"}, "limits": {"memory": "3Gi"}}
    assert render({"resources": resources}).container["resources"] == resources


def test_default_resources_have_requests_and_a_memory_limit_but_no_cpu_limit() -> None:
    resources = render().container["resources"]
    assert resources["requests"] == {"cpu": "250m", "memory": "256Mi"}
    assert resources["limits"] == {"memory": "512Mi"}


@pytest.mark.parametrize("mode", ["Off", "Initial", "Recreate", "InPlaceOrRecreate", "Auto"])
def test_vpa_mode_min_max_follow_values(mode: str) -> None:
    vpa = render(
        {
            "vpa": {
                "enabled": True,
                "updateMode": mode,
                "minAllowed": {"cpu": "200m", "memory": "300Mi"},
                "maxAllowed": {"cpu": "3", "memory": "6Gi"},
            }
        }
    ).one("VerticalPodAutoscaler")
    assert vpa["apiVersion"] == "autoscaling.k8s.io/v1"
    assert vpa["spec"]["targetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": FULLNAME,
    }
    assert vpa["spec"]["updatePolicy"] == {"updateMode": mode}
    (policy,) = vpa["spec"]["resourcePolicy"]["containerPolicies"]
    assert policy["containerName"] == "gateway"
    assert policy["minAllowed"] == {"cpu": "200m", "memory": "300Mi"}
    assert policy["maxAllowed"] == {"cpu": "3", "memory": "6Gi"}
    assert policy["controlledResources"] == ["memory"]


def test_vpa_is_off_by_default() -> None:
    assert not render().of_kind("VerticalPodAutoscaler")


def test_vpa_may_control_cpu_when_the_hpa_does_not_scale_on_it() -> None:
    vpa_on_both = {
        "enabled": True,
        "updateMode": "Recreate",
        "controlledResources": ["cpu", "memory"],
    }
    no_hpa = render({"autoscaling": {"enabled": False}, "vpa": vpa_on_both})
    (policy,) = no_hpa.one("VerticalPodAutoscaler")["spec"]["resourcePolicy"]["containerPolicies"]
    assert policy["controlledResources"] == ["cpu", "memory"]
    memory_hpa = render(
        {
            "autoscaling": {
                "targetCPUUtilizationPercentage": None,
                "targetMemoryUtilizationPercentage": 75,
            },
            "vpa": {"enabled": True, "updateMode": "Recreate", "controlledResources": ["cpu"]},
        }
    )
    assert [
        m["resource"]["name"] for m in memory_hpa.one("HorizontalPodAutoscaler")["spec"]["metrics"]
    ] == ["memory"]


@pytest.mark.parametrize(
    ("autoscaling", "controlled", "resource"),
    [
        ({}, ["cpu", "memory"], "cpu"),
        ({}, ["cpu"], "cpu"),
        ({"targetMemoryUtilizationPercentage": 80}, ["memory"], "memory"),
        (
            {"targetCPUUtilizationPercentage": None, "targetMemoryUtilizationPercentage": 80},
            ["memory"],
            "memory",
        ),
    ],
)
def test_vpa_must_not_control_what_the_hpa_scales_on(
    autoscaling: dict, controlled: list[str], resource: str
) -> None:
    result = template(
        {
            "autoscaling": autoscaling,
            "vpa": {"enabled": True, "updateMode": "Off", "controlledResources": controlled},
        }
    )
    assert result.returncode != 0
    assert (
        f"vpa.controlledResources includes {resource} but the HPA scales on {resource}"
        in result.stderr
    )


def test_image_by_tag_defaults_to_app_version_and_digest_pins_it() -> None:
    assert render().container["image"] == "liftoff-gateway:0.1.0"
    values = sample_values.everything_on()
    image = render(values).container["image"]
    assert (
        image == f"{values['image']['repository']}:{values['image']['tag']}@{sample_values.DIGEST}"
    )
    assert render({"image": {"pullPolicy": "Always"}}).container["imagePullPolicy"] == "Always"
    by_digest_only = render(
        {"image": {"repository": "registry.example/gw", "digest": sample_values.DIGEST}}
    )
    assert by_digest_only.container["image"] == f"registry.example/gw@{sample_values.DIGEST}"


def test_pdb_min_available_below_min_replicas() -> None:
    pdb = render(
        {"autoscaling": {"minReplicas": 3}, "podDisruptionBudget": {"minAvailable": 2}}
    ).one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 2
    assert (
        pdb["spec"]["selector"]["matchLabels"]
        == render().one("Deployment")["spec"]["selector"]["matchLabels"]
    )


@pytest.mark.parametrize(
    "values",
    [
        {"autoscaling": {"enabled": False}, "replicaCount": 1},
        {"autoscaling": {"minReplicas": 1, "maxReplicas": 1}},
        {"podDisruptionBudget": {"enabled": False}},
    ],
    ids=["single-replica", "hpa-max-1", "disabled"],
)
def test_no_pdb_when_a_single_replica_is_all_there_can_be_or_disabled(values: dict) -> None:
    assert not render(values).of_kind("PodDisruptionBudget")


@pytest.mark.parametrize(
    ("values", "smallest"),
    [
        (
            {"autoscaling": {"minReplicas": 2}, "podDisruptionBudget": {"minAvailable": 2}},
            "2, autoscaling.minReplicas",
        ),
        ({"autoscaling": {"minReplicas": 1, "maxReplicas": 4}}, "1, autoscaling.minReplicas"),
        (
            {
                "autoscaling": {"enabled": False},
                "replicaCount": 3,
                "podDisruptionBudget": {"minAvailable": 3},
            },
            "3, replicaCount",
        ),
    ],
)
def test_pdb_that_would_block_every_drain_is_refused(values: dict, smallest: str) -> None:
    result = template(values)
    assert result.returncode != 0
    assert "podDisruptionBudget.minAvailable" in result.stderr
    assert f"smallest replica count ({smallest})" in result.stderr


def test_topology_spread_over_zones_and_nodes() -> None:
    constraints = render().pod_spec["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in constraints} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }
    selector = render().one("Deployment")["spec"]["selector"]["matchLabels"]
    for constraint in constraints:
        assert constraint["maxSkew"] == 1
        assert constraint["labelSelector"]["matchLabels"] == selector
        assert constraint["matchLabelKeys"] == ["pod-template-hash"]
    hard = render({"topologySpread": {"maxSkew": 2, "whenUnsatisfiable": "DoNotSchedule"}}).pod_spec
    assert {(c["maxSkew"], c["whenUnsatisfiable"]) for c in hard["topologySpreadConstraints"]} == {
        (2, "DoNotSchedule")
    }
    assert (
        "topologySpreadConstraints" not in render({"topologySpread": {"enabled": False}}).pod_spec
    )


def test_target_group_binding_only_with_an_arn() -> None:
    assert not render().of_kind("TargetGroupBinding")
    values = sample_values.everything_on()
    tgb = render(values).one("TargetGroupBinding")
    assert tgb["apiVersion"] == "elbv2.k8s.aws/v1beta1"
    assert tgb["spec"]["targetGroupARN"] == sample_values.TARGET_GROUP_ARN
    assert tgb["spec"]["targetType"] == "ip"
    assert tgb["spec"]["serviceRef"] == {"name": FULLNAME, "port": 80}
    (rule,) = tgb["spec"]["networking"]["ingress"]
    assert rule["from"] == [{"securityGroup": {"groupID": "sg-0123456789abcdef0"}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]
    values["targetGroupBinding"].pop("albSecurityGroupId")
    assert "networking" not in render(values).one("TargetGroupBinding")["spec"]


def test_service_account_carries_the_irsa_role() -> None:
    sa = render(sample_values.everything_on()).one("ServiceAccount")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == sample_values.ROLE_ARN
    assert sa["automountServiceAccountToken"] is False
    assert "annotations" not in render().one("ServiceAccount")["metadata"]
    assert not render({"serviceAccount": {"create": False, "name": "shared"}}).of_kind(
        "ServiceAccount"
    )
    assert (
        render({"serviceAccount": {"create": False, "name": "shared"}}).pod_spec[
            "serviceAccountName"
        ]
        == "shared"
    )


def test_network_policy_ingress_to_app_port_and_narrow_egress() -> None:
    policy = render(
        {"networkPolicy": {"ingressCIDRs": ["10.20.0.0/16", "10.21.0.0/16"], "redisPort": 6380}}
    ).one("NetworkPolicy")
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = spec["ingress"]
    assert ingress["from"] == [
        {"ipBlock": {"cidr": "10.20.0.0/16"}},
        {"ipBlock": {"cidr": "10.21.0.0/16"}},
    ]
    assert ingress["ports"] == [{"protocol": "TCP", "port": 8080}]
    egress_ports = sorted(
        (p["protocol"], p["port"]) for rule in spec["egress"] for p in rule["ports"]
    )
    assert egress_ports == [("TCP", 53), ("TCP", 443), ("TCP", 6380), ("UDP", 53)]
    assert not render({"networkPolicy": {"enabled": False}}).of_kind("NetworkPolicy")


def test_network_policy_redis_egress_can_be_limited_to_cidrs() -> None:
    spec = render(sample_values.everything_on()).one("NetworkPolicy")["spec"]
    (redis_rule,) = [r for r in spec["egress"] if r["ports"] == [{"protocol": "TCP", "port": 6379}]]
    assert redis_rule["to"] == [{"ipBlock": {"cidr": "10.42.0.0/16"}}]

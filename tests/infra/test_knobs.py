"""Each knob changes what it should and only that: the dev stack is run again with one key
overridden and compared, resource by resource, with the committed dev stack."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

import pytest

from infra import eks_versions
from infra.mocking import ProgramRun, run_program

NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
RELEASE = "kubernetes:helm.sh/v3:Release"
CACHE = "aws:elasticache/replicationGroup:ReplicationGroup"
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"


@dataclass
class Diff:
    changed: dict[tuple[str, str], set[str]]  # (type, name) -> top-level input keys that changed
    added: set[tuple[str, str]]
    removed: set[tuple[str, str]]

    def changed_types(self) -> set[str]:
        return {t for t, _ in self.changed}

    def added_types(self) -> set[str]:
        return {t for t, _ in self.added}


# The image tag is a hash of app/'s files, not a setting (it moves whenever app/ is edited).
SOURCE_DERIVED = {("docker-build:index:Image", "tags")}


def _inputs(run: ProgramRun) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (r.type, r.name): {k: v for k, v in r.inputs.items() if (r.type, k) not in SOURCE_DERIVED}
        for r in run.resources
    }


def diff(base: ProgramRun, other: ProgramRun) -> Diff:
    before, after = _inputs(base), _inputs(other)
    changed = {}
    for key in before.keys() & after.keys():
        keys = {
            k
            for k in before[key].keys() | after[key].keys()
            if before[key].get(k) != after[key].get(k)
        }
        if keys:
            changed[key] = keys
    return Diff(changed, after.keys() - before.keys(), before.keys() - after.keys())


def gateway_values(run: ProgramRun) -> dict[str, Any]:
    return next(r for r in run.of_type(RELEASE) if r.inputs["name"] == "gateway").inputs["values"]


def test_node_group_size_changes_only_the_node_group(dev_run: ProgramRun) -> None:
    run = run_program("dev", {"liftoff:nodeMaxSize": "7", "liftoff:nodeMinSize": "2"})
    d = diff(dev_run, run)
    assert not d.added and not d.removed
    assert d.changed == {(NODE_GROUP, "liftoff-dev-nodes"): {"scalingConfig"}}
    assert run.one(NODE_GROUP).inputs["scalingConfig"] == {
        "minSize": 2,
        "desiredSize": 2,
        "maxSize": 7,
    }


def test_instance_types_change_only_the_node_group(dev_run: ProgramRun) -> None:
    run = run_program("dev", {"liftoff:nodeInstanceTypes": '["m7g.large", "m7g.xlarge"]'})
    d = diff(dev_run, run)
    assert not d.added and not d.removed
    assert d.changed == {
        (NODE_GROUP, "liftoff-dev-nodes"): {"instanceTypes", "amiType"},
        # Graviton nodes need an arm64 image.
        ("docker-build:index:Image", "liftoff-dev-image-build"): {"platforms"},
    }
    assert run.one(NODE_GROUP).inputs["amiType"] == "AL2023_ARM_64_STANDARD"
    assert run.one("docker-build:index:Image").inputs["platforms"] == ["linux/arm64"]


@pytest.mark.parametrize(
    ("key", "value", "path", "expected"),
    [
        ("liftoff:appMaxReplicas", "7", ("autoscaling", "maxReplicas"), 7),
        ("liftoff:appMinReplicas", "2", ("autoscaling", "minReplicas"), 2),
        ("liftoff:hpaCpuTarget", "45", ("autoscaling", "targetCPUUtilizationPercentage"), 45),
        ("liftoff:podMemoryLimit", "1Gi", ("resources", "limits"), {"memory": "1Gi"}),
        (
            "liftoff:podCpuRequest",
            "500m",
            ("resources", "requests"),
            {"cpu": "500m", "memory": "256Mi"},
        ),
    ],
)
def test_app_knobs_change_only_the_gateway_release(
    dev_run: ProgramRun, key: str, value: str, path: tuple[str, str], expected: Any
) -> None:
    run = run_program("dev", {key: value})
    d = diff(dev_run, run)
    assert not d.added and not d.removed
    assert d.changed == {(RELEASE, "liftoff-dev-gateway"): {"values"}}
    section, field = path
    assert gateway_values(run)[section][field] == expected


def test_vpa_mode_installs_the_controller_and_enables_the_vpa(dev_run: ProgramRun) -> None:
    run = run_program("dev", {"liftoff:vpaMode": "Initial"})
    d = diff(dev_run, run)
    assert d.added == {(RELEASE, "liftoff-dev-vpa")} and not d.removed
    assert d.changed == {(RELEASE, "liftoff-dev-gateway"): {"values"}}
    assert gateway_values(run)["vpa"]["enabled"] is True
    vpa = run.one(RELEASE, "liftoff-dev-vpa").inputs["values"]
    assert vpa["updater"]["enabled"] is False  # Initial never evicts


def test_cache_node_type_changes_only_the_replication_group(dev_run: ProgramRun) -> None:
    run = run_program("dev", {"liftoff:cacheNodeType": "cache.m7g.large"})
    d = diff(dev_run, run)
    assert not d.added and not d.removed
    assert d.changed == {(CACHE, "liftoff-dev-cache"): {"nodeType"}}


def test_cache_replicas_add_failover_and_per_node_alarms(dev_run: ProgramRun) -> None:
    run = run_program("dev", {"liftoff:cacheReplicas": "1"})
    d = diff(dev_run, run)
    assert not d.removed
    assert d.changed == {
        (CACHE, "liftoff-dev-cache"): {
            "numCacheClusters",
            "automaticFailoverEnabled",
            "multiAzEnabled",
        }
    }
    assert d.added_types() == {ALARM} and len(d.added) == 3
    assert {name for _, name in d.added} == {
        "liftoff-dev-cache-002-cpu",
        "liftoff-dev-cache-002-memory",
        "liftoff-dev-cache-002-evictions",
    }


def test_budget_changes_only_the_budget(dev_run: ProgramRun) -> None:
    run = run_program(
        "dev", {"liftoff:monthlyBudgetUsd": "123.45", "liftoff:budgetThresholds": "[90]"}
    )
    d = diff(dev_run, run)
    assert not d.added and not d.removed
    budget_key = ("aws:budgets/budget:Budget", "liftoff-dev-budget")
    assert d.changed == {budget_key: {"limitAmount", "notifications"}}
    budget = run.one("aws:budgets/budget:Budget").inputs
    assert budget["limitAmount"] == "123.45"
    assert [(n["notificationType"], n["threshold"]) for n in budget["notifications"]] == [
        ("ACTUAL", 90),
        ("FORECASTED", 100),
    ]


def test_nat_per_az_adds_gateways_and_reroutes(dev_run: ProgramRun) -> None:
    run = run_program("dev", {"liftoff:natGateways": "perAz"})
    d = diff(dev_run, run)
    assert not d.removed
    assert d.added == {
        ("aws:ec2/eip:Eip", "liftoff-dev-nat-eip-1"),
        ("aws:ec2/natGateway:NatGateway", "liftoff-dev-nat-1"),
    }
    assert d.changed == {("aws:ec2/route:Route", "liftoff-dev-private-default-1"): {"natGatewayId"}}


def test_waf_adds_only_the_web_acl(dev_run: ProgramRun) -> None:
    run = run_program("dev", {"liftoff:wafEnabled": "true"})
    d = diff(dev_run, run)
    assert not d.removed and not d.changed
    assert d.added_types() == {
        "aws:wafv2/webAcl:WebAcl",
        "aws:wafv2/webAclAssociation:WebAclAssociation",
    }


def test_longest_stream_moves_every_timing_together(dev_run: ProgramRun) -> None:
    run = run_program("dev", {"liftoff:longestStreamSeconds": "600"})
    d = diff(dev_run, run)
    assert not d.added and not d.removed
    assert d.changed == {
        ("aws:lb/loadBalancer:LoadBalancer", "liftoff-dev-alb"): {"idleTimeout"},
        ("aws:lb/targetGroup:TargetGroup", "liftoff-dev-tg"): {"deregistrationDelay"},
        (RELEASE, "liftoff-dev-gateway"): {"values"},
    }
    assert run.one("aws:lb/loadBalancer:LoadBalancer").inputs["idleTimeout"] == 600
    assert gateway_values(run)["server"]["gracefulShutdownSeconds"] == 600


def test_tags_reach_every_tagged_resource_and_nothing_else(dev_run: ProgramRun) -> None:
    run = run_program("dev", {"liftoff:tags": '{"team": "ml-platform"}'})
    d = diff(dev_run, run)
    assert not d.added and not d.removed
    assert d.changed
    for key, fields in d.changed.items():
        assert fields <= {"tags", "tagSpecifications"}, key
    tagged = [r for r in run.resources if isinstance(r.inputs.get("tags"), dict)]
    assert all(r.inputs["tags"]["team"] == "ml-platform" for r in tagged)


def test_cache_auth_token_rotation(dev_run: ProgramRun) -> None:
    run = run_program("dev", {"liftoff:cacheAuthTokenVersion": "2"})
    d = diff(dev_run, run)
    assert not d.added and not d.removed
    password = ("random:index/randomPassword:RandomPassword", "liftoff-dev-redis-auth-token")
    version = (
        "aws:secretsmanager/secretVersion:SecretVersion",
        "liftoff-dev-redis-auth-token-version",
    )
    assert d.changed == {
        password: {"keepers"},
        (CACHE, "liftoff-dev-cache"): {"authTokenWoVersion"},
        version: {"secretStringWoVersion"},
    }
    cache = run.one(CACHE).inputs
    assert cache["authTokenWoVersion"] == 2 and cache["authTokenUpdateStrategy"] == "ROTATE"


def test_kubernetes_version_upgrades_control_plane_then_nodes(
    dev_run: ProgramRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The day 1.34 (the base) and 1.35 (the default, dev_run) were both offered.
    monkeypatch.setattr(eks_versions, "today", lambda: date(2026, 12, 1))
    base = run_program("dev", {"liftoff:kubernetesVersion": "1.34"})
    run = dev_run
    assert run.settings.kubernetes_version == "1.35"
    d = diff(base, run)
    assert not d.added and not d.removed
    addons = ("coredns", "eks-pod-identity-agent", "kube-proxy", "vpc-cni")
    assert d.changed == {
        ("aws:eks/cluster:Cluster", "liftoff-dev-eks"): {"version"},
        (NODE_GROUP, "liftoff-dev-nodes"): {"version"},
        (RELEASE, "liftoff-dev-cluster-autoscaler"): {"values"},
        # Managed add-ons move to the builds for the new version (infra/addons.py).
        **{("aws:eks/addon:Addon", f"liftoff-dev-addon-{a}"): {"addonVersion"} for a in addons},
    }
    assert run.one(NODE_GROUP).inputs["version"] == "1.35"
    autoscaler = next(r for r in run.of_type(RELEASE) if r.inputs["name"] == "cluster-autoscaler")
    assert autoscaler.inputs["values"]["image"] == {"tag": "v1.35.0"}
    # The node group takes the version from the cluster's output, so it waits for the control
    # plane; so do the add-ons (their clusterName).
    cluster = run.one("aws:eks/cluster:Cluster")
    assert cluster.urn in run.one(NODE_GROUP).options["dependencies"]
    for addon in run.of_type("aws:eks/addon:Addon"):
        assert cluster.urn in addon.options["dependencies"]

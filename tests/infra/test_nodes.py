"""Managed node groups under the mock runtime: one workload group on demand; with Spot a small
on-demand system group holding the cluster add-ons (taint + selector), each group with its own
IMDSv2/encrypted-gp3 launch template, both known to the cluster autoscaler and both priced."""

from __future__ import annotations

import json

import pytest

from infra.cost import estimate
from infra.mocking import ProgramRun, RecordedResource, run_program
from infra.nodes import SYSTEM_INSTANCE_TYPE, SYSTEM_MAX_SIZE, SYSTEM_MIN_SIZE
from infra.plan import mock_resource_ids
from infra.policies import ResourceRecord

NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
RELEASE = "kubernetes:helm.sh/v3:Release"
ADDON = "aws:eks/addon:Addon"
SPOT = {
    "liftoff:nodeCapacityType": "SPOT",
    "liftoff:nodeInstanceTypes": '["m7i.large", "m6i.large", "t3.large"]',
    "liftoff:vpaMode": "Initial",
}
SYSTEM_SELECTOR = {"liftoff/pool": "system"}
SYSTEM_TOLERATION = {"key": "CriticalAddonsOnly", "operator": "Exists", "effect": "NoSchedule"}
PINNED_RELEASES = ("cluster-autoscaler", "metrics-server", "aws-load-balancer-controller")
VPA_COMPONENTS = ("recommender", "updater", "admissionController")


@pytest.fixture(scope="module")
def spot_run() -> ProgramRun:
    return run_program("dev", SPOT)


def group(run: ProgramRun, name: str) -> RecordedResource:
    return run.one(NODE_GROUP, name)


def release(run: ProgramRun, name: str) -> RecordedResource:
    return next(r for r in run.of_type(RELEASE) if r.inputs["name"] == name)


def coredns(run: ProgramRun) -> RecordedResource:
    return next(r for r in run.of_type(ADDON) if r.inputs["addonName"] == "coredns")


def template_of(run: ProgramRun, node_group: RecordedResource) -> RecordedResource:
    template_id = node_group.inputs["launchTemplate"]["id"]
    return next(t for t in run.of_type(LAUNCH_TEMPLATE) if t.id == template_id)


def test_node_groups_are_their_own_component(dev_run: ProgramRun) -> None:
    component = dev_run.one("liftoff:index:NodeGroups")
    cluster = dev_run.one("liftoff:index:Cluster")
    assert component.parent_urn == cluster.urn
    for resource in (*dev_run.of_type(NODE_GROUP), *dev_run.of_type(LAUNCH_TEMPLATE)):
        assert resource.parent_urn == component.urn, resource.name
    role = dev_run.one("aws:iam/role:Role", "liftoff-dev-node-role")
    assert role.parent_urn == component.urn


def test_on_demand_has_one_group_and_unpinned_add_ons(dev_run: ProgramRun) -> None:
    (only,) = dev_run.of_type(NODE_GROUP)
    assert only.inputs["capacityType"] == "ON_DEMAND" and not only.inputs.get("taints")
    assert len(dev_run.of_type(LAUNCH_TEMPLATE)) == 1
    for name in PINNED_RELEASES:
        values = release(dev_run, name).inputs["values"]
        assert "nodeSelector" not in values and "tolerations" not in values, name
    assert not coredns(dev_run).inputs.get("configurationValues")


def test_spot_adds_an_on_demand_system_group(spot_run: ProgramRun) -> None:
    workload = group(spot_run, "liftoff-dev-nodes")
    system = group(spot_run, "liftoff-dev-system-nodes")
    assert workload.inputs["capacityType"] == "SPOT"
    assert workload.inputs["instanceTypes"] == ["m7i.large", "m6i.large", "t3.large"]
    assert workload.inputs["labels"] == {"liftoff/pool": "default"}
    assert not workload.inputs.get("taints")
    assert system.inputs["capacityType"] == "ON_DEMAND"
    assert system.inputs["nodeGroupNamePrefix"] == "liftoff-dev-system-"
    # Prefixes, not names: a replaced group (new types, capacity type) is created before the
    # old one goes, which one fixed name would not allow.
    assert workload.inputs["nodeGroupNamePrefix"] == "liftoff-dev-nodes-"
    assert "nodeGroupName" not in workload.inputs and "nodeGroupName" not in system.inputs
    assert system.inputs["instanceTypes"] == [SYSTEM_INSTANCE_TYPE]
    assert system.inputs["amiType"] == "AL2023_x86_64_STANDARD"
    assert system.inputs["labels"] == SYSTEM_SELECTOR
    assert system.inputs["taints"] == [
        {"key": "CriticalAddonsOnly", "value": "true", "effect": "NO_SCHEDULE"}
    ]
    assert system.inputs["scalingConfig"] == {
        "minSize": SYSTEM_MIN_SIZE,
        "desiredSize": SYSTEM_MIN_SIZE,
        "maxSize": SYSTEM_MAX_SIZE,
    }
    assert system.options["ignore_changes"] == ["scalingConfig.desiredSize"]
    # Same subnets (private) and role as the workload group.
    assert system.inputs["subnetIds"] == workload.inputs["subnetIds"]
    assert system.inputs["nodeRoleArn"] == workload.inputs["nodeRoleArn"]


@pytest.mark.parametrize("stack_overrides", [{}, SPOT], ids=["on-demand", "spot"])
def test_every_group_has_an_imdsv2_encrypted_gp3_launch_template(
    stack_overrides: dict[str, str], dev_run: ProgramRun, spot_run: ProgramRun
) -> None:
    run = spot_run if stack_overrides else dev_run
    groups = run.of_type(NODE_GROUP)
    assert len(groups) == (2 if stack_overrides else 1)
    templates = {template_of(run, g).urn for g in groups}
    assert len(templates) == len(groups)  # one template per group
    for node_group in groups:
        template = template_of(run, node_group).inputs
        assert template["metadataOptions"]["httpTokens"] == "required"
        (mapping,) = template["blockDeviceMappings"]
        assert mapping["ebs"]["volumeType"] == "gp3" and mapping["ebs"]["encrypted"] == "true"


def test_the_cluster_autoscaler_discovers_both_groups(spot_run: ProgramRun) -> None:
    cluster_name = spot_run.one("aws:eks/cluster:Cluster").inputs["name"]
    for node_group in spot_run.of_type(NODE_GROUP):
        assert node_group.inputs["tags"]["k8s.io/cluster-autoscaler/enabled"] == "true"
        assert node_group.inputs["tags"][f"k8s.io/cluster-autoscaler/{cluster_name}"] == "owned"
    autoscaler = release(spot_run, "cluster-autoscaler").inputs["values"]
    assert autoscaler["autoDiscovery"] == {"clusterName": cluster_name}


def test_spot_pins_the_add_ons_to_the_system_group(spot_run: ProgramRun) -> None:
    for name in PINNED_RELEASES:
        values = release(spot_run, name).inputs["values"]
        assert values["nodeSelector"] == SYSTEM_SELECTOR, name
        assert values["tolerations"] == [SYSTEM_TOLERATION], name
    vpa = release(spot_run, "vpa").inputs["values"]
    for component in VPA_COMPONENTS:
        assert vpa[component]["nodeSelector"] == SYSTEM_SELECTOR, component
        assert vpa[component]["tolerations"] == [SYSTEM_TOLERATION], component
    assert json.loads(coredns(spot_run).inputs["configurationValues"]) == {
        "nodeSelector": SYSTEM_SELECTOR,
        "tolerations": [SYSTEM_TOLERATION],
    }
    # The gateway tolerates nothing: it stays on the Spot group.
    gateway = release(spot_run, "gateway").inputs["values"]
    assert not gateway.get("tolerations")


def test_workloads_and_coredns_wait_for_both_groups(spot_run: ProgramRun) -> None:
    group_urns = {g.urn for g in spot_run.of_type(NODE_GROUP)}
    assert group_urns <= set(coredns(spot_run).options["depends_on"])
    for name in ("gateway", *PINNED_RELEASES):
        assert group_urns <= set(release(spot_run, name).options["dependencies"]), name


def test_both_groups_are_priced(spot_run: ProgramRun) -> None:
    ids = mock_resource_ids(spot_run)
    records = [
        ResourceRecord(r.type, r.name, r.inputs, urn=r.urn, id=ids.get(r.urn))
        for r in spot_run.resources
    ]
    items = {
        (i.resource, i.resource_type): i
        for i in estimate(records, "us-east-1").items
        if i.resource.endswith("nodes")
    }
    system = items[("liftoff-dev-system-nodes", NODE_GROUP)]
    assert system.description == "2 x t3.medium nodes (min 2..max 3)"
    assert system.monthly_usd == round(0.0416 * 730 * 2, 2)
    volumes = items[("liftoff-dev-system-nodes", "aws:ebs/volume:Volume")]
    assert volumes.description.startswith("2 x 30 GB gp3")
    workload_volumes = items[("liftoff-dev-nodes", "aws:ebs/volume:Volume")]
    assert workload_volumes.description.startswith("2 x 50 GB gp3")
    assert "SPOT" in items[("liftoff-dev-nodes", NODE_GROUP)].description


@pytest.mark.parametrize(
    ("types", "ami_type"),
    [
        ('["g5.xlarge", "g6.xlarge"]', "AL2023_x86_64_NVIDIA"),
        ('["g5g.xlarge"]', "AL2023_ARM_64_NVIDIA"),
        ('["inf2.xlarge"]', "AL2023_x86_64_NEURON"),
        ('["a1.xlarge"]', "AL2023_ARM_64_STANDARD"),
    ],
)
def test_accelerated_and_graviton_groups_get_their_ami_type(types: str, ami_type: str) -> None:
    run = run_program(
        "dev",
        {
            "liftoff:nodeInstanceTypes": types,
            "liftoff:allowUnknownInstanceTypes": "true",
        },
    )
    assert run.one(NODE_GROUP).inputs["amiType"] == ami_type


def test_resources_moved_into_the_component_keep_their_old_urns(dev_run: ProgramRun) -> None:
    """They used to be children of the Cluster: an alias to it keeps existing stacks from
    replacing the node group, its launch template and role."""
    cluster = dev_run.one("liftoff:index:Cluster")
    moved = [
        dev_run.one(NODE_GROUP, "liftoff-dev-nodes"),
        dev_run.one(LAUNCH_TEMPLATE, "liftoff-dev-nodes-lt"),
        dev_run.one("aws:iam/role:Role", "liftoff-dev-node-role"),
    ]
    for resource in moved:
        assert resource.options["alias_parents"] == [cluster.urn], resource.name

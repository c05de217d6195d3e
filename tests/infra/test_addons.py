"""Managed add-ons follow the cluster's Kubernetes version, the VPC CNI enforces the chart's
NetworkPolicy and acts with its own IRSA role instead of the node role, and the order on a new
cluster lets nodes become Ready."""

from __future__ import annotations

import json

import pytest

from infra.addons import CNI_POLICY_ARN, MANAGED_ADDONS
from infra.mocking import ProgramRun, addon_build, run_program
from infra.policies import ResourceRecord, RuleContext, evaluate

ADDON = "aws:eks/addon:Addon"
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
ROLE = "aws:iam/role:Role"
ATTACHMENT = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"


def addons(run: ProgramRun) -> dict[str, dict]:
    return {a.inputs["addonName"]: a for a in run.of_type(ADDON)}


def records(run: ProgramRun) -> list[ResourceRecord]:
    # Ids as the mocks gave them, so `role` (a role name) traces to its role.
    return [ResourceRecord(r.type, r.name, r.inputs, urn=r.urn, id=r.id) for r in run.resources]


def verdict(resources: list[ResourceRecord], rule_id: str) -> list[str]:
    context = RuleContext("dev", "us-east-1", "dev", offline=True)
    found = next(v for v in evaluate(resources, context) if v.rule.id == rule_id)
    assert found.applicable
    return [f.message for f in found.findings]


def test_every_managed_addon_is_pinned_to_the_build_for_the_cluster_version(
    dev_run: ProgramRun,
) -> None:
    version = dev_run.settings.kubernetes_version
    found = addons(dev_run)
    assert (
        set(found)
        == set(MANAGED_ADDONS)
        == {
            "vpc-cni",
            "kube-proxy",
            "coredns",
            "eks-pod-identity-agent",
        }
    )
    for name, addon in found.items():
        assert addon.inputs["addonVersion"] == addon_build(name, version)


def test_bumping_the_kubernetes_version_moves_every_addon(dev_run: ProgramRun) -> None:
    older = run_program("dev", {"liftoff:kubernetesVersion": "1.34"})
    for name, addon in addons(older).items():
        assert addon.inputs["addonVersion"] == addon_build(name, "1.34")
        assert addon.inputs["addonVersion"] != addons(dev_run)[name].inputs["addonVersion"]
    assert addons(older)["kube-proxy"].inputs["addonVersion"].startswith("v1.34.")


def test_mock_answers_like_eks_for_an_unknown_addon() -> None:
    with pytest.raises(ValueError, match="no EKS add-on named aws-ebs"):
        addon_build("aws-ebs", "1.35")


def test_vpc_cni_enforces_network_policies(dev_run: ProgramRun) -> None:
    cni = addons(dev_run)["vpc-cni"]
    assert json.loads(cni.inputs["configurationValues"]) == {"enableNetworkPolicy": "true"}
    gateway = next(
        r for r in dev_run.of_type("kubernetes:helm.sh/v3:Release") if r.inputs["name"] == "gateway"
    )
    assert gateway.inputs["values"]["networkPolicy"]["enabled"] is True
    assert verdict(records(dev_run), "LIFTOFF_NETWORK_POLICY_ENFORCED") == []


def test_network_policy_rule_fails_when_the_cni_does_not_enforce(dev_run: ProgramRun) -> None:
    broken = [
        ResourceRecord(r.type, r.name, {**r.inputs, "configurationValues": None}, urn=r.urn)
        if r.type == ADDON and r.inputs["addonName"] == "vpc-cni"
        else r
        for r in records(dev_run)
    ]
    messages = verdict(broken, "LIFTOFF_NETWORK_POLICY_ENFORCED")
    assert len(messages) == 1
    assert "render NetworkPolicy objects but" in messages[0]
    assert "does not set enableNetworkPolicy" in messages[0]


def test_vpc_cni_acts_with_its_own_irsa_role(dev_run: ProgramRun) -> None:
    cni = addons(dev_run)["vpc-cni"]
    role = next(r for r in dev_run.of_type(ROLE) if r.name.endswith("-vpc-cni-role"))
    assert cni.inputs["serviceAccountRoleArn"] == f"arn:aws:iam::123456789012:role/{role.id}"
    trust = json.loads(role.inputs["assumeRolePolicy"])["Statement"][0]
    assert trust["Action"] == "sts:AssumeRoleWithWebIdentity"
    conditions = trust["Condition"]["StringEquals"]
    assert "system:serviceaccount:kube-system:aws-node" in conditions.values()
    attachment = next(
        a for a in dev_run.of_type(ATTACHMENT) if a.inputs["policyArn"] == CNI_POLICY_ARN
    )
    assert attachment.inputs["role"] == role.id
    # The add-on switches to the role only once the role holds the policy.
    assert attachment.urn in cni.options["dependencies"]


def test_the_node_role_no_longer_carries_the_cni_policy(dev_run: ProgramRun) -> None:
    node_role = next(r for r in dev_run.of_type(ROLE) if "ec2.amazonaws.com" in str(r.inputs))
    on_node_role = [
        a.inputs["policyArn"]
        for a in dev_run.of_type(ATTACHMENT)
        if a.inputs["role"] == node_role.id
    ]
    assert on_node_role and CNI_POLICY_ARN not in on_node_role
    assert [a for a in dev_run.of_type(ATTACHMENT) if a.inputs["policyArn"] == CNI_POLICY_ARN]
    assert verdict(records(dev_run), "LIFTOFF_CNI_OWN_ROLE") == []
    # The rule catches the old layout: the CNI policy back on the node role.
    old_layout = ResourceRecord(
        ATTACHMENT,
        "node-cni",
        {"role": node_role.id, "policyArn": CNI_POLICY_ARN},
        urn="urn:pulumi:dev::liftoff::aws:iam/rolePolicyAttachment:RolePolicyAttachment::node-cni",
    )
    messages = verdict([*records(dev_run), old_layout], "LIFTOFF_CNI_OWN_ROLE")
    assert len(messages) == 1 and "EC2 (node) role" in messages[0]


def test_nodes_wait_for_the_cni_and_coredns_waits_for_nodes(dev_run: ProgramRun) -> None:
    nodes = dev_run.one(NODE_GROUP)
    found = addons(dev_run)
    for name in ("vpc-cni", "kube-proxy", "eks-pod-identity-agent"):
        assert found[name].urn in nodes.options["depends_on"], name
        assert nodes.urn not in found[name].options["dependencies"]
    assert nodes.urn in found["coredns"].options["depends_on"]

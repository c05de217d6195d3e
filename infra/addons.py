"""Managed EKS add-ons, each pinned to the newest build EKS publishes for the cluster's Kubernetes
version, and the VPC CNI's own IAM role.

`addon_version` is resolved with `aws.eks.get_addon_version(most_recent=True)` for
`liftoff:kubernetesVersion` on every run, so bumping the version moves the add-ons with it (and a
new EKS build shows up in `pulumi preview` as an add-on update).

The VPC CNI's permissions (AmazonEKS_CNI_Policy) are on a role for its service account
`kube-system/aws-node`, not on the node role, as the EKS best-practices guide recommends: pods on
the node cannot borrow them. IRSA rather than Pod Identity: aws-node must assign pod IPs as soon
as a node boots, and with Pod Identity it would first wait for the pod identity agent on the same
node; IRSA needs only the cluster's OIDC provider, which the other controllers already use.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pulumi
import pulumi_aws as aws

from infra import iam
from infra.settings import StackSettings
from infra.tags import tags

VPC_CNI = "vpc-cni"
COREDNS = "coredns"
# DaemonSets: healthy on a cluster without nodes, and nodes need the CNI to become Ready.
BEFORE_NODES = (VPC_CNI, "kube-proxy", "eks-pod-identity-agent")
# A Deployment: needs nodes to schedule on.
AFTER_NODES = (COREDNS,)
MANAGED_ADDONS = BEFORE_NODES + AFTER_NODES
CNI_POLICY_ARN = "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy"
CNI_NAMESPACE = "kube-system"
CNI_SERVICE_ACCOUNT = "aws-node"


def vpc_cni_configuration() -> str:
    """The vpc-cni add-on's configuration values: its network policy agent enforces the chart's
    NetworkPolicy objects (without it, EKS accepts them and enforces nothing)."""
    return json.dumps({"enableNetworkPolicy": "true"})


def addon_version(addon: str, kubernetes_version: str, parent: pulumi.Resource) -> str:
    """The newest build of `addon` EKS publishes for `kubernetes_version`."""
    return aws.eks.get_addon_version(
        addon_name=addon,
        kubernetes_version=kubernetes_version,
        most_recent=True,
        opts=pulumi.InvokeOptions(parent=parent),
    ).version


def managed_addon(
    name: str,
    settings: StackSettings,
    cluster: aws.eks.Cluster,
    addon: str,
    parent: pulumi.Resource,
    *,
    depends_on: Sequence[pulumi.Resource] = (),
    configuration_values: str | None = None,
    service_account_role_arn: pulumi.Input[str] | None = None,
) -> aws.eks.Addon:
    s = settings
    return aws.eks.Addon(
        f"{name}-addon-{addon}",
        cluster_name=cluster.name,
        addon_name=addon,
        addon_version=addon_version(addon, s.kubernetes_version, parent),
        configuration_values=configuration_values,
        service_account_role_arn=service_account_role_arn,
        resolve_conflicts_on_create="OVERWRITE",
        resolve_conflicts_on_update="PRESERVE",
        tags=tags(s, f"{s.prefix}-{addon}"),
        opts=pulumi.ResourceOptions(parent=parent, depends_on=list(depends_on)),
    )


def addons_before_nodes(
    name: str,
    settings: StackSettings,
    cluster: aws.eks.Cluster,
    oidc_provider_arn: pulumi.Input[str],
    oidc_issuer_url: pulumi.Input[str],
    parent: pulumi.Resource,
) -> list[aws.eks.Addon]:
    """vpc-cni (with its IRSA role and network policy enforcement), kube-proxy and the pod
    identity agent; the node group waits for them."""
    s = settings
    child = pulumi.ResourceOptions(parent=parent)
    cni_role = iam.role(
        f"{name}-vpc-cni-role",
        s,
        f"{s.prefix}-vpc-cni",
        iam.irsa_trust_policy(
            oidc_provider_arn, oidc_issuer_url, CNI_NAMESPACE, CNI_SERVICE_ACCOUNT
        ),
        child,
    )
    cni_policy = aws.iam.RolePolicyAttachment(
        f"{name}-vpc-cni-policy",
        role=cni_role.name,
        policy_arn=CNI_POLICY_ARN,
        opts=pulumi.ResourceOptions(parent=cni_role),
    )
    vpc_cni = managed_addon(
        name,
        s,
        cluster,
        VPC_CNI,
        parent,
        depends_on=[cni_policy],
        configuration_values=vpc_cni_configuration(),
        service_account_role_arn=cni_role.arn,
    )
    others = [
        managed_addon(name, s, cluster, addon, parent) for addon in BEFORE_NODES if addon != VPC_CNI
    ]
    return [vpc_cni, *others]

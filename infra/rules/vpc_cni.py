"""Rules on the VPC CNI add-on: NetworkPolicy objects are enforced, and its permissions are on
its own role, not the node role."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from infra.rules.base import (
    RuleContext,
    StackFinding,
    StackView,
    as_map,
    is_true,
    label,
    stack_rule,
)
from infra.rules.resource_types import EKS_ADDON, HELM_RELEASE, IAM_ROLE, ROLE_POLICY_ATTACHMENT

CNI_POLICY_ARN = "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy"


def _json_map(value: Any) -> Mapping[str, Any]:
    """An add-on's `configurationValues` (a JSON string) as a map; {} when absent or not JSON."""
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except ValueError:
            return {}
        return decoded if isinstance(decoded, Mapping) else {}
    return as_map(value)


@stack_rule(
    "LIFTOFF_NETWORK_POLICY_ENFORCED",
    "NetworkPolicy objects a Helm release renders are enforced by the VPC CNI",
    "error",
    'set the vpc-cni add-on\'s configurationValues to {"enableNetworkPolicy": "true"} '
    "(infra/addons.py); without it EKS accepts NetworkPolicy objects and enforces none.",
)
def network_policy_enforced(view: StackView, context: RuleContext) -> Iterator[StackFinding]:
    releases = [
        r
        for r in view.of_type(HELM_RELEASE)
        if is_true(as_map(as_map(r.inputs.get("values")).get("networkPolicy")).get("enabled"))
    ]
    if not releases:
        return
    cni = [a for a in view.of_type(EKS_ADDON) if a.inputs.get("addonName") == "vpc-cni"]
    enforcing = [
        a
        for a in cni
        if str(_json_map(a.inputs.get("configurationValues")).get("enableNetworkPolicy")).lower()
        == "true"
    ]
    if enforcing:
        return
    names = ", ".join(label(r) for r in releases)
    where = f"{label(cni[0])} does not set enableNetworkPolicy" if cni else "no vpc-cni add-on"
    yield (cni[0] if cni else releases[0]), f"{names} render NetworkPolicy objects but {where}."


@stack_rule(
    "LIFTOFF_CNI_OWN_ROLE",
    "The VPC CNI's permissions are on its service account's role, not on the node role",
    "error",
    "attach AmazonEKS_CNI_Policy to an IRSA or Pod Identity role for kube-system/aws-node "
    "(the vpc-cni add-on's serviceAccountRoleArn) instead of the node role.",
)
def cni_policy_off_node_role(view: StackView, context: RuleContext) -> Iterator[StackFinding]:
    for attachment in view.of_type(ROLE_POLICY_ATTACHMENT):
        if attachment.inputs.get("policyArn") != CNI_POLICY_ARN:
            continue
        for role in view.referenced(attachment, "role") or []:
            if role.type == IAM_ROLE and "ec2.amazonaws.com" in str(
                role.inputs.get("assumeRolePolicy", "")
            ):
                yield (
                    attachment,
                    f"{label(attachment)} gives {label(role)}, an EC2 (node) role, the VPC "
                    "CNI's permissions: every pod on the node can use them.",
                )

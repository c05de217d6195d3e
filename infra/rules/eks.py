"""Rules on the EKS cluster (secrets encryption, control-plane logs, public endpoint) and its
managed node groups' launch template."""

from __future__ import annotations

from collections.abc import Iterator

from infra.address_space import world_open_versions
from infra.rules.base import (
    ResourceRecord,
    RuleContext,
    as_list,
    as_map,
    is_true,
    label,
    resource_rule,
)
from infra.rules.resource_types import EKS_CLUSTER, EKS_NODE_GROUP

EKS_LOG_TYPES = ("api", "audit", "authenticator", "controllerManager", "scheduler")


@resource_rule(
    "CKV_AWS_58",
    "EKS encrypts Kubernetes secrets with a KMS key (envelope encryption)",
    "error",
    [EKS_CLUSTER],
    "set encryptionConfig {resources: [secrets], provider: {keyArn: <customer-managed key>}}.",
)
def eks_secrets_encrypted(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    config = as_map(resource.inputs.get("encryptionConfig"))
    resources = [str(r) for r in as_list(config.get("resources"))]
    key_arn = as_map(config.get("provider")).get("keyArn")
    if "secrets" not in resources or not key_arn:
        yield f"{label(resource)} does not encrypt Kubernetes secrets with a KMS key."


@resource_rule(
    "CKV_AWS_37",
    "EKS control-plane logging is on for every log type",
    "error",
    [EKS_CLUSTER],
    "set enabledClusterLogTypes to " + ", ".join(EKS_LOG_TYPES) + " (liftoff:clusterLogTypes).",
)
def eks_control_plane_logging(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    enabled = {str(t) for t in as_list(resource.inputs.get("enabledClusterLogTypes"))}
    missing = [t for t in EKS_LOG_TYPES if t not in enabled]
    if missing:
        yield f"{label(resource)} does not log control-plane types: {', '.join(missing)}."


@resource_rule(
    "CKV_AWS_38",
    "In prod the EKS public API endpoint is off or limited to an allowlist",
    "error",
    [EKS_CLUSTER],
    "set liftoff:clusterEndpointPublicCidrs to your office/VPN CIDRs "
    "(vpcConfig.publicAccessCidrs), or liftoff:clusterEndpointPublic=false.",
    production_only=True,
    also=["CKV_AWS_39"],
)
def eks_public_endpoint_restricted(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    vpc = as_map(resource.inputs.get("vpcConfig"))
    public = vpc.get("endpointPublicAccess")
    if public is not None and not is_true(public):
        return
    cidrs = as_list(vpc.get("publicAccessCidrs"))
    if not cidrs or world_open_versions(cidrs):
        yield f"{label(resource)} exposes its public API endpoint to the whole internet."


@resource_rule(
    "LIFTOFF_NODES_LAUNCH_TEMPLATE",
    "Managed node groups launch from the stack's launch template",
    "error",
    [EKS_NODE_GROUP],
    "pass launchTemplate {id, version} of a launch template with IMDSv2 required and encrypted "
    "volumes (infra/cluster.py declares one per node group).",
)
def node_group_launch_template(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    template = as_map(resource.inputs.get("launchTemplate"))
    if not (template.get("id") or template.get("name")):
        # EKS's own template answers IMDSv1 and leaves volume encryption to the account default.
        yield (
            f"{label(resource)} has no launch template, so its nodes get EKS's default one "
            "(IMDSv1 allowed, volumes not encrypted by the stack)."
        )

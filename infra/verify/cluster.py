"""The EKS cluster, its access entries and its managed node groups."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from infra.access import grants
from infra.names import system_node_group, workload_node_group
from infra.nodes import SYSTEM_INSTANCE_TYPE, SYSTEM_MAX_SIZE, SYSTEM_MIN_SIZE
from infra.settings import config_key
from infra.verify.checks import (
    Check,
    MissingOutput,
    Target,
    api_failure,
    compare,
    compare_key,
    missing_output,
    pages,
    shown,
)


def cluster_checks(target: Target) -> list[Check]:
    s = target.settings
    try:
        name = target.output("clusterName")
        key_arn = target.output("clusterSecretsKeyArn")
    except MissingOutput as missing:
        return [missing_output(target, "EKS cluster", str(missing))]
    resource = f"EKS cluster {name}"
    try:
        cluster = target.client("eks").describe_cluster(name=name)["cluster"]
    except ClientError as exc:
        return [api_failure(target, resource, "exists", "ACTIVE", exc)]
    vpc = cluster.get("resourcesVpcConfig", {})
    encryption = [
        c.get("provider", {}).get("keyArn")
        for c in cluster.get("encryptionConfig", [])
        if "secrets" in c.get("resources", [])
    ]
    logged = sorted(
        {
            kind
            for setting in cluster.get("logging", {}).get("clusterLogging", [])
            if setting.get("enabled")
            for kind in setting.get("types", [])
        }
    )
    public = vpc.get("endpointPublicAccess")
    checks = [
        compare(
            resource,
            "status",
            "ACTIVE",
            cluster.get("status"),
            f"wait for the running update (aws eks list-updates --name {name}), then "
            + target.pulumi_up,
        ),
        compare(
            resource,
            "Kubernetes version",
            s.kubernetes_version,
            cluster.get("version"),
            f"{target.pulumi_up} (applies {config_key('kubernetes_version')}; EKS upgrades one "
            "minor version at a time)",
        ),
        compare_key(
            resource,
            "secrets encryption key",
            key_arn,
            encryption[0] if encryption else None,
            target.pulumi_up,
        ),
        compare(
            resource,
            "control-plane log types",
            sorted(s.cluster_log_types),
            logged,
            lambda: target.apply_or_keep("cluster_log_types", logged),
        ),
        compare(
            resource,
            "public endpoint",
            s.cluster_endpoint_public,
            public,
            lambda: target.apply_or_keep("cluster_endpoint_public", public),
        ),
        compare(
            resource, "private endpoint", True, vpc.get("endpointPrivateAccess"), target.pulumi_up
        ),
    ]
    if s.cluster_endpoint_public:
        cidrs = sorted(vpc.get("publicAccessCidrs", []))
        checks.append(
            compare(
                resource,
                "public endpoint CIDRs",
                sorted(s.cluster_endpoint_public_cidrs),
                cidrs,
                lambda: target.apply_or_keep("cluster_endpoint_public_cidrs", cidrs),
            )
        )
    checks.extend(access_entry_checks(target, name))
    return checks


def access_entry_checks(target: Target, cluster_name: str) -> list[Check]:
    """Each principal of `clusterAdmins`/`clusterViewers` (and the deployer) has its entry with
    its one access policy; a STANDARD entry nobody configured is drift too (EKS's own entries
    for the node role are of another type)."""
    s = target.settings
    try:
        deployer = target.output("deployerArn")
    except MissingOutput as missing:
        return [missing_output(target, "EKS access entries", str(missing))]
    eks = target.client("eks")
    expected = grants(s.cluster_admins, s.cluster_viewers, deployer)
    checks: list[Check] = []
    for grant in expected:
        resource = f"access entry {grant.principal_arn}"
        policy = grant.policy_arn.rsplit("/", 1)[-1]
        try:
            associated = eks.list_associated_access_policies(
                clusterName=cluster_name, principalArn=grant.principal_arn
            )["associatedAccessPolicies"]
        except ClientError as exc:
            checks.append(api_failure(target, resource, "access policy", policy, exc))
            continue
        actual = sorted(
            f"{a['policyArn'].rsplit('/', 1)[-1]} ({a.get('accessScope', {}).get('type')})"
            for a in associated
        )
        key = "liftoff:clusterAdmins" if grant.level == "admin" else "liftoff:clusterViewers"
        checks.append(
            compare(
                resource,
                "access policy",
                [f"{policy} (cluster)"],
                actual,
                f"{target.pulumi_up} (the principal is in {key})",
            )
        )
    try:
        listed = pages(eks, "list_access_entries", "accessEntries", clusterName=cluster_name)
        known = {g.principal_arn for g in expected}
        for arn in listed:
            if arn in known:
                continue
            entry = eks.describe_access_entry(clusterName=cluster_name, principalArn=arn)
            if entry["accessEntry"].get("type", "STANDARD") != "STANDARD":
                continue
            checks.append(
                Check(
                    f"access entry {arn}",
                    "configured",
                    "not an access entry",
                    "STANDARD entry",
                    "drift",
                    f"add it to liftoff:clusterAdmins or liftoff:clusterViewers, or remove it: "
                    f"aws eks delete-access-entry --cluster-name {cluster_name} "
                    f"--principal-arn {arn}",
                )
            )
    except ClientError as exc:
        checks.append(api_failure(target, f"EKS cluster {cluster_name}", "access entries", "", exc))
    return checks


@dataclass(frozen=True)
class ExpectedGroup:
    name: str  # EKS appends `-<suffix>`
    instance_types: list[str]
    capacity_type: str
    min_size: int
    max_size: int


def expected_node_groups(target: Target) -> list[ExpectedGroup]:
    """The groups infra/nodes.py declares for these settings."""
    s = target.settings
    groups = [
        ExpectedGroup(
            workload_node_group(s.prefix),
            list(s.node_instance_types),
            s.node_capacity_type,
            s.node_min_size,
            s.node_max_size,
        )
    ]
    if s.node_capacity_type == "SPOT":
        groups.append(
            ExpectedGroup(
                system_node_group(s.prefix),
                [SYSTEM_INSTANCE_TYPE],
                "ON_DEMAND",
                SYSTEM_MIN_SIZE,
                SYSTEM_MAX_SIZE,
            )
        )
    return groups


def node_group_checks(target: Target) -> list[Check]:
    try:
        cluster_name = target.output("clusterName")
        names: list[str] = list(target.output("nodeGroupNames"))
    except MissingOutput as missing:
        return [missing_output(target, "node groups", str(missing))]
    checks: list[Check] = []
    expected = expected_node_groups(target)
    for group in expected:
        found = [n for n in names if n.startswith(f"{group.name}-")]
        if not found:
            checks.append(
                Check(
                    f"node group {group.name}-*",
                    "deployed",
                    "in stack output nodeGroupNames",
                    "absent",
                    "drift",
                    f"{target.pulumi_up} (applies {config_key('node_capacity_type')})",
                )
            )
            continue
        checks.extend(_group_checks(target, cluster_name, found[0], group))
    declared = tuple(f"{g.name}-" for g in expected)
    for name in names:
        if not name.startswith(declared):
            checks.append(
                Check(
                    f"node group {name}",
                    "declared",
                    "not declared by these settings",
                    "deployed",
                    "drift",
                    f"{target.pulumi_up} (applies {config_key('node_capacity_type')})",
                )
            )
    return checks


def _group_checks(
    target: Target, cluster_name: str, name: str, group: ExpectedGroup
) -> list[Check]:
    s = target.settings
    resource = f"node group {name}"
    try:
        live = target.client("eks").describe_nodegroup(
            clusterName=cluster_name, nodegroupName=name
        )["nodegroup"]
    except ClientError as exc:
        return [api_failure(target, resource, "exists", "ACTIVE", exc)]
    scaling = live.get("scalingConfig", {})
    workload = group.name == workload_node_group(s.prefix)

    def keep(field: str, value: object) -> str:
        # The system group's shape is the program's, not a config key.
        return target.apply_or_keep(field, value) if workload else target.pulumi_up

    types = live.get("instanceTypes", [])
    capacity = live.get("capacityType")
    low, high = scaling.get("minSize"), scaling.get("maxSize")
    checks = [
        compare(resource, "status", "ACTIVE", live.get("status"), _health_fix(live, target)),
        compare(
            resource,
            "instance types",
            group.instance_types,
            types,
            lambda: keep("node_instance_types", types),
        ),
        compare(
            resource,
            "capacity type",
            group.capacity_type,
            capacity,
            lambda: keep("node_capacity_type", capacity),
        ),
        compare(resource, "min size", group.min_size, low, lambda: keep("node_min_size", low)),
        compare(resource, "max size", group.max_size, high, lambda: keep("node_max_size", high)),
        Check(
            resource,
            "desired size",
            "the cluster autoscaler's",
            shown(scaling.get("desiredSize")),
            "info",
        ),
    ]
    checks.extend(_launch_template_checks(target, resource, live.get("launchTemplate")))
    return checks


def _health_fix(live: dict[str, Any], target: Target) -> str:
    issues = live.get("health", {}).get("issues", [])
    found = "; ".join(f"{i.get('code')}: {i.get('message')}" for i in issues)
    return f"{found + '; ' if found else ''}fix the cause, then {target.pulumi_up}"


def _launch_template_checks(
    target: Target, resource: str, template: dict[str, Any] | None
) -> list[Check]:
    s = target.settings
    if not template or not template.get("id"):
        return [
            Check(resource, "launch template", "IMDSv2 only", "none", "drift", target.pulumi_up)
        ]
    try:
        versions = target.client("ec2").describe_launch_template_versions(
            LaunchTemplateId=template["id"], Versions=[str(template.get("version", "$Default"))]
        )["LaunchTemplateVersions"]
    except ClientError as exc:
        return [api_failure(target, resource, "launch template", "IMDSv2 only", exc)]
    if not versions:
        return [
            Check(
                resource, "launch template", "IMDSv2 only", "not found", "drift", target.pulumi_up
            )
        ]
    metadata = versions[0].get("LaunchTemplateData", {}).get("MetadataOptions", {})
    hops = metadata.get("HttpPutResponseHopLimit")
    return [
        compare(
            resource,
            "IMDSv2 (launch template http tokens)",
            "required",
            metadata.get("HttpTokens", "optional"),
            target.pulumi_up,
        ),
        compare(
            resource,
            "IMDS hop limit",
            s.node_metadata_hop_limit,
            hops,
            lambda: target.apply_or_keep("node_metadata_hop_limit", hops),
        ),
    ]

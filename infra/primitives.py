"""Resources several components declare alike: KMS keys, log groups, single-port TCP rules."""

from __future__ import annotations

from typing import Literal

import pulumi
import pulumi_aws as aws

from infra.settings import StackSettings
from infra.tags import tags


def kms_key(
    resource_name: str,
    settings: StackSettings,
    *,
    description: str,
    tag_name: str,
    alias: bool = False,
    policy: pulumi.Input[str] | None = None,
    opts: pulumi.ResourceOptions,
) -> aws.kms.Key:
    """A customer-managed key that rotates yearly; `alias` adds `alias/<tag_name>` beside it."""
    key = aws.kms.Key(
        resource_name,
        description=description,
        enable_key_rotation=True,
        deletion_window_in_days=settings.recovery_window_days,
        policy=policy,
        tags=tags(settings, tag_name),
        opts=opts,
    )
    if alias:
        aws.kms.Alias(
            f"{resource_name}-alias",
            name=f"alias/{tag_name}",
            target_key_id=key.key_id,
            opts=opts,
        )
    return key


def log_group(
    resource_name: str,
    settings: StackSettings,
    *,
    log_group_name: str,
    tag_name: str,
    opts: pulumi.ResourceOptions,
) -> aws.cloudwatch.LogGroup:
    """A log group an AWS service writes into, declared by the stack so that the stack's
    retention (`liftoff:flowLogsRetentionDays`) applies instead of the service's "never expire"."""
    return aws.cloudwatch.LogGroup(
        resource_name,
        name=log_group_name,
        retention_in_days=settings.flow_logs_retention_days,
        tags=tags(settings, tag_name),
        opts=opts,
    )


def tcp_rule(
    component_name: str,
    settings: StackSettings,
    suffix: str,
    direction: Literal["ingress", "egress"],
    *,
    security_group_id: pulumi.Input[str],
    port: int,
    description: str,
    cidr_ipv4: pulumi.Input[str] | None = None,
    referenced_security_group_id: pulumi.Input[str] | None = None,
    prefix_list_id: pulumi.Input[str] | None = None,
    opts: pulumi.ResourceOptions,
) -> aws.vpc.SecurityGroupIngressRule | aws.vpc.SecurityGroupEgressRule:
    """One TCP port to or from a CIDR, another security group or a prefix list (give one).

    Named `<component_name>-<suffix>` and tagged `<prefix>-<suffix>`, like the components'
    other resources. One rule per resource (not inline rules) so each can change on its own.
    """
    rule_type = (
        aws.vpc.SecurityGroupIngressRule
        if direction == "ingress"
        else aws.vpc.SecurityGroupEgressRule
    )
    return rule_type(
        f"{component_name}-{suffix}",
        security_group_id=security_group_id,
        cidr_ipv4=cidr_ipv4,
        referenced_security_group_id=referenced_security_group_id,
        prefix_list_id=prefix_list_id,
        ip_protocol="tcp",
        from_port=port,
        to_port=port,
        description=description,
        tags=tags(settings, f"{settings.prefix}-{suffix}"),
        opts=opts,
    )

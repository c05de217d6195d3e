"""Cache: ElastiCache (Valkey or Redis OSS) replication group reachable only from the nodes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.cache_engines import parameter_group_family
from infra.names import cache_group_id
from infra.primitives import tcp_rule
from infra.settings import StackSettings
from infra.tags import tags

CACHE_PORT = 6379


def member_cluster_ids(replication_group_id: str, replicas: int) -> list[str]:
    """ElastiCache names the nodes of a non-clustered group <id>-001, <id>-002, ..."""
    return [f"{replication_group_id}-{i + 1:03d}" for i in range(1 + replicas)]


@dataclass
class CacheArgs:
    settings: StackSettings
    vpc_id: pulumi.Input[str]
    private_subnet_ids: Sequence[pulumi.Input[str]]
    node_security_group_id: pulumi.Input[str]
    kms_key_arn: pulumi.Input[str]
    auth_token: pulumi.Input[str]


class Cache(pulumi.ComponentResource):
    primary_endpoint: pulumi.Output[str]
    reader_endpoint: pulumi.Output[str]
    replication_group_id: str
    member_cluster_ids: list[str]

    def __init__(
        self, name: str, args: CacheArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("liftoff:index:Cache", name, None, opts)
        s = args.settings
        child = pulumi.ResourceOptions(parent=self)
        group_id = cache_group_id(s.prefix)

        sg = aws.ec2.SecurityGroup(
            f"{name}-cache-sg",
            vpc_id=args.vpc_id,
            description=f"{s.prefix}: cache, reachable only from the EKS nodes on {CACHE_PORT}",
            tags=tags(s, f"{s.prefix}-cache"),
            opts=child,
        )
        tcp_rule(
            name,
            s,
            "cache-from-nodes",
            "ingress",
            security_group_id=sg.id,
            port=CACHE_PORT,
            referenced_security_group_id=args.node_security_group_id,
            description="Redis protocol from the EKS nodes and pods",
            opts=child,
        )
        subnet_group = aws.elasticache.SubnetGroup(
            f"{name}-cache-subnets",
            name=f"{s.prefix}-cache",
            description=f"{s.prefix}: private subnets",
            subnet_ids=list(args.private_subnet_ids),
            tags=tags(s, f"{s.prefix}-cache-subnets"),
            opts=child,
        )
        params = aws.elasticache.ParameterGroup(
            f"{name}-cache-params",
            name=f"{s.prefix}-cache-{s.cache_engine}{s.cache_engine_version.replace('.', '-')}",
            family=parameter_group_family(s.cache_engine, s.cache_engine_version),
            description=f"{s.prefix}: evict least recently used keys when full",
            parameters=[{"name": "maxmemory-policy", "value": "allkeys-lru"}],
            tags=tags(s, f"{s.prefix}-cache-params"),
            opts=child,
        )
        ha = s.cache_replicas >= 1
        group = aws.elasticache.ReplicationGroup(
            f"{name}-cache",
            replication_group_id=group_id,
            description=f"{s.prefix}: gateway response cache and shared rate limits",
            engine=s.cache_engine,
            engine_version=s.cache_engine_version,
            node_type=s.cache_node_type,
            num_cache_clusters=1 + s.cache_replicas,
            automatic_failover_enabled=ha,
            multi_az_enabled=ha,
            port=CACHE_PORT,
            subnet_group_name=subnet_group.name,
            security_group_ids=[sg.id],
            parameter_group_name=params.name,
            at_rest_encryption_enabled=True,
            kms_key_id=args.kms_key_arn,
            transit_encryption_enabled=True,
            transit_encryption_mode="required",
            # Write-only: the token reaches AWS but is never stored in Pulumi state.
            auth_token_wo=args.auth_token,
            auth_token_wo_version=s.cache_auth_token_version,
            # On a version bump both tokens work until the next change: no client outage.
            auth_token_update_strategy="ROTATE",
            snapshot_retention_limit=s.cache_snapshot_retention_days,
            snapshot_window="03:00-04:00" if s.cache_snapshot_retention_days else None,
            maintenance_window="sun:05:00-sun:06:00",
            auto_minor_version_upgrade=True,
            apply_immediately=not s.is_prod,
            tags=tags(s, group_id),
            opts=child,
        )
        self.replication_group_id = group_id
        self.member_cluster_ids = member_cluster_ids(group_id, s.cache_replicas)
        self.primary_endpoint = group.primary_endpoint_address
        self.reader_endpoint = group.reader_endpoint_address
        self.register_outputs(
            {
                "primaryEndpoint": self.primary_endpoint,
                "readerEndpoint": self.reader_endpoint,
                "replicationGroupId": group_id,
            }
        )

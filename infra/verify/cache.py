"""The cache replication group: status, encryption, AUTH, failover, engine and size."""

from __future__ import annotations

from botocore.exceptions import ClientError

from infra.verify.checks import (
    Check,
    MissingOutput,
    Target,
    api_failure,
    compare,
    compare_key,
    missing_output,
)


def engine_version_matches(configured: str, live: str | None) -> bool:
    """ElastiCache reports the full version (7.1.0 or 7.1); the setting is major.minor."""
    return bool(live) and (live == configured or str(live).startswith(f"{configured}."))


def cache_checks(target: Target) -> list[Check]:
    try:
        group_id = target.output("cacheReplicationGroupId")
        key_arn = target.output("dataKeyArn")
    except MissingOutput as missing:
        return [missing_output(target, "cache", str(missing))]
    s = target.settings
    resource = f"cache {group_id}"
    elasticache = target.client("elasticache")
    try:
        group = elasticache.describe_replication_groups(ReplicationGroupId=group_id)[
            "ReplicationGroups"
        ][0]
    except ClientError as exc:
        return [api_failure(target, resource, "exists", "available", exc)]
    ha = "enabled" if s.cache_replicas >= 1 else "disabled"
    members = group.get("MemberClusters", [])
    engine = group.get("Engine")
    node_type = group.get("CacheNodeType")
    failover = group.get("AutomaticFailover")
    multi_az = group.get("MultiAZ")

    def replicas_fix() -> str:
        return target.apply_or_keep("cache_replicas", max(len(members) - 1, 0))

    checks = [
        compare(resource, "status", "available", group.get("Status"), target.pulumi_up),
        compare(
            resource,
            "engine",
            s.cache_engine,
            engine,
            lambda: target.apply_or_keep("cache_engine", engine),
        ),
        compare(
            resource,
            "node type",
            s.cache_node_type,
            node_type,
            lambda: target.apply_or_keep("cache_node_type", node_type),
        ),
        compare(
            resource,
            "transit encryption",
            True,
            group.get("TransitEncryptionEnabled"),
            target.pulumi_up,
        ),
        compare(
            resource,
            "transit encryption mode",
            "required",
            group.get("TransitEncryptionMode"),
            target.pulumi_up,
        ),
        compare(
            resource,
            "at-rest encryption",
            True,
            group.get("AtRestEncryptionEnabled"),
            f"{target.pulumi_up} (at-rest encryption is set at creation: the group is replaced)",
        ),
        compare_key(resource, "at-rest KMS key", key_arn, group.get("KmsKeyId"), target.pulumi_up),
        compare(resource, "AUTH token", True, group.get("AuthTokenEnabled"), target.pulumi_up),
        compare(
            resource, "nodes (primary + replicas)", 1 + s.cache_replicas, len(members), replicas_fix
        ),
        compare(resource, "automatic failover", ha, failover, replicas_fix),
        compare(resource, "Multi-AZ", ha, multi_az, replicas_fix),
        _engine_version_check(target, resource, members),
    ]
    return checks


def _engine_version_check(target: Target, resource: str, members: list[str]) -> Check:
    """The version is reported per node (DescribeCacheClusters), not per group."""
    configured = target.settings.cache_engine_version
    if not members:
        return Check(resource, "engine version", configured, "no nodes", "drift", target.pulumi_up)
    try:
        node = target.client("elasticache").describe_cache_clusters(CacheClusterId=members[0])[
            "CacheClusters"
        ][0]
    except ClientError as exc:
        return api_failure(target, resource, "engine version", configured, exc)
    live = node.get("EngineVersion")
    ok = engine_version_matches(configured, live)
    return Check(
        resource,
        "engine version",
        configured,
        str(live),
        "ok" if ok else "drift",
        ""
        if ok
        else f"{target.pulumi_up} (applies liftoff:cacheEngineVersion; ElastiCache upgrades "
        "in place, never downgrades)",
    )

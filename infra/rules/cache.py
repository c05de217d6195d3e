"""Rules on ElastiCache replication groups: encryption, AUTH and failover."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from infra.rules.base import (
    ResourceRecord,
    RuleContext,
    as_int,
    as_list,
    is_true,
    label,
    resource_rule,
)
from infra.rules.resource_types import REPLICATION_GROUP


@resource_rule(
    "CKV_AWS_29",
    "ElastiCache encrypts data at rest",
    "error",
    [REPLICATION_GROUP],
    "set atRestEncryptionEnabled: true (and kmsKeyId to the stack's key).",
)
def cache_at_rest(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    if not is_true(resource.inputs.get("atRestEncryptionEnabled")):
        yield f"{label(resource)} does not encrypt data at rest."


@resource_rule(
    "CKV_AWS_191",
    "ElastiCache at-rest encryption uses the customer-managed KMS key",
    "warning",
    [REPLICATION_GROUP],
    "set kmsKeyId to the stack's customer-managed key.",
)
def cache_cmk(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    if is_true(resource.inputs.get("atRestEncryptionEnabled")) and not resource.inputs.get(
        "kmsKeyId"
    ):
        yield f"{label(resource)} encrypts at rest with the AWS-owned key, not the stack's CMK."


@resource_rule(
    "CKV_AWS_30",
    "ElastiCache encrypts data in transit (TLS)",
    "error",
    [REPLICATION_GROUP],
    "set transitEncryptionEnabled: true (clients connect with rediss://).",
)
def cache_in_transit(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    if not is_true(resource.inputs.get("transitEncryptionEnabled")):
        yield f"{label(resource)} does not use TLS in transit."
    elif resource.inputs.get("transitEncryptionMode") == "preferred":
        yield f"{label(resource)} still accepts plaintext (transitEncryptionMode 'preferred')."


@resource_rule(
    "CKV_AWS_31",
    "ElastiCache requires an AUTH token (or RBAC user group) over TLS",
    "error",
    [REPLICATION_GROUP],
    "set authTokenWo (write-only, keeps it out of state) from a generated secret, with TLS on.",
)
def cache_auth(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    inputs = resource.inputs
    has_auth = bool(
        inputs.get("authTokenWo") or inputs.get("authToken") or as_list(inputs.get("userGroupIds"))
    )
    if not has_auth:
        yield f"{label(resource)} accepts clients without an AUTH token."
    elif not is_true(inputs.get("transitEncryptionEnabled")):
        yield f"{label(resource)} sends its AUTH token without TLS."


def _cache_node_count(inputs: Mapping[str, Any]) -> int:
    if inputs.get("numCacheClusters") is not None:
        return as_int(inputs.get("numCacheClusters"), 1)
    replicas = as_int(inputs.get("replicasPerNodeGroup"), 0)
    return replicas + 1


@resource_rule(
    "LIFTOFF_CACHE_FAILOVER",
    "ElastiCache has a replica in another AZ with automatic failover (prod), and failover is on "
    "whenever replicas exist",
    "error",
    [REPLICATION_GROUP],
    "set liftoff:cacheReplicas >= 1 (turns on automaticFailoverEnabled and multiAzEnabled).",
)
def cache_failover(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    inputs = resource.inputs
    nodes = _cache_node_count(inputs)
    failover = is_true(inputs.get("automaticFailoverEnabled")) and is_true(
        inputs.get("multiAzEnabled")
    )
    if context.is_production and nodes < 2:
        yield f"{label(resource)} has a single node: an AZ or node failure loses the cache."
    elif nodes >= 2 and not failover:
        yield f"{label(resource)} has replicas but no multi-AZ automatic failover."

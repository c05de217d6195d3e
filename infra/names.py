"""Names of the resources AWS holds per account (and region), and the limits AWS puts on them.

Every such name starts with the stack's prefix `<liftoff:name>-<stack>`: two stacks in one
account never collide, and a stack named after its environment (dev, staging, prod) keeps the
`<name>-<environment>` names it was created with. Settings refuse a name and stack whose
prefix would make any of these names longer than AWS allows, before a resource is declared.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

# Pulumi accepts letters, digits, '-', '_' and '.' in a stack name; S3, ElastiCache and ELB names
# take only lowercase letters, digits and single hyphens.
STACK_NAME_RE = r"^[a-z0-9]+(-[a-z0-9]+)*$"


def resource_prefix(name: str, stack: str) -> str:
    return f"{name}-{stack}"


def alb_name(prefix: str) -> str:
    return f"{prefix}-alb"


def target_group_name(prefix: str) -> str:
    return f"{prefix}-gateway"


def alb_logs_bucket_prefix(prefix: str) -> str:
    """S3 adds a 26-character unique suffix to a bucket_prefix (63 in all)."""
    return f"{prefix}-alb-logs-"


def budget_name(prefix: str) -> str:
    return f"{prefix}-monthly"


def secret_name(prefix: str, slug: str) -> str:
    return f"{prefix}/{slug}"


def cache_group_id(prefix: str) -> str:
    return f"{prefix}-cache"


def workload_node_group(prefix: str) -> str:
    """Name of the workload node group (EKS appends `-<suffix>` to it) and its templates."""
    return f"{prefix}-nodes"


def system_node_group(prefix: str) -> str:
    """Name of the on-demand system node group of a Spot stack (EKS appends `-<suffix>`)."""
    return f"{prefix}-system"


@dataclass(frozen=True)
class NameLimit:
    what: str
    build: Callable[[str], str]
    limit: int


# The longest name of each kind the stack builds from the prefix, with AWS's limit for it.
NAME_LIMITS: tuple[NameLimit, ...] = (
    NameLimit("load balancer name", alb_name, 32),
    NameLimit("target group name", target_group_name, 32),
    NameLimit("S3 bucket_prefix (ALB access logs)", alb_logs_bucket_prefix, 37),
    NameLimit("ElastiCache replication group id", cache_group_id, 40),
    NameLimit("cache node id", lambda p: f"{cache_group_id(p)}-001", 50),
    NameLimit("IAM role name", lambda p: f"{p}-aws-load-balancer-controller", 64),
    # A prefix: the provider appends a 26-character unique suffix (63 in all).
    NameLimit("EKS node group name prefix", lambda p: f"{system_node_group(p)}-", 63 - 26),
    NameLimit("EKS cluster name", lambda p: f"{p}-eks", 100),
    NameLimit("budget name", budget_name, 100),
    NameLimit("secret name", lambda p: secret_name(p, "upstream-api-key"), 512),
)
MAX_PREFIX = min(limit.limit - len(limit.build("")) for limit in NAME_LIMITS)


def name_problems(name: str, stack: str) -> Iterator[tuple[str, str]]:
    """(field, allowed) when `<name>-<stack>` cannot prefix every name AWS holds; the field
    "stack" means the Pulumi stack name itself."""
    if not re.match(STACK_NAME_RE, stack):
        yield (
            "stack",
            "a stack name of lowercase letters and digits separated by single '-' (it is part "
            "of S3, ElastiCache and load balancer names, which allow nothing else)",
        )
        return
    if "--" in name:
        yield ("name", "no two consecutive '-' (ElastiCache ids refuse them)")
        return
    prefix = resource_prefix(name, stack)
    too_long = [
        f"{limit.what} '{limit.build(prefix)}' is {len(limit.build(prefix))} (AWS allows "
        f"{limit.limit})"
        for limit in NAME_LIMITS
        if len(limit.build(prefix)) > limit.limit
    ]
    if too_long:
        yield (
            "name",
            f"'{prefix}' (<name>-<stack>) must be at most {MAX_PREFIX} characters, it is "
            f"{len(prefix)}: " + "; ".join(too_long),
        )

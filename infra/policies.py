"""Liftoff's one policy rule set, over resource records as Pulumi's engine sees them.

Each rule is a small function over a resource's type, name and camelCase inputs (`encryptionConfig`,
`metadataOptions.httpTokens`, ...), or over the whole resource list where a rule needs to relate
resources (a node group and its subnets, a security group and the load balancer using it).
Rule ids follow checkov's where one exists, so users of that scanner recognise them.

The same `RULES` are used by the offline plan (`infra.plan`) and, adapted without a second copy of
their logic, by the CrossGuard policy pack in `infra/policy/` for `pulumi preview --policy-pack`.

Inputs are read only through `Mapping`/`Sequence` methods (`.get`, iteration) so that CrossGuard's
unknown-checking proxies can stand in for plain dicts: a value unknown during preview raises where
it is read and the pack reports that rule as not yet checkable instead of guessing.

This module is the public entry point: the framework is in `infra/rules/base.py`, the rules in one
module per concern under `infra/rules/`. `python -m infra.policies` prints the rule reference.
"""

from infra.rules import RULES_BY_ID
from infra.rules.account import supports_tags
from infra.rules.base import (
    RULES,
    Finding,
    ResourceRecord,
    Rule,
    RuleContext,
    RuleVerdict,
    StackView,
    default_tags_of,
    evaluate,
    rules_markdown,
)
from infra.rules.resource_types import (
    AWS_PROVIDER,
    EKS_CLUSTER,
    EKS_NODE_GROUP,
    KMS_KEY,
    LAUNCH_TEMPLATE,
    LOAD_BALANCERS,
    REPLICATION_GROUP,
    SECRET,
)
from infra.rules.waf import (
    ALB_BODY_INSPECTION_BYTES,
    GATEWAY_DEFAULT_MAX_BODY_BYTES,
    smallest_blocked_body,
)

__all__ = [
    "ALB_BODY_INSPECTION_BYTES",
    "AWS_PROVIDER",
    "EKS_CLUSTER",
    "EKS_NODE_GROUP",
    "GATEWAY_DEFAULT_MAX_BODY_BYTES",
    "KMS_KEY",
    "LAUNCH_TEMPLATE",
    "LOAD_BALANCERS",
    "REPLICATION_GROUP",
    "RULES",
    "RULES_BY_ID",
    "SECRET",
    "Finding",
    "ResourceRecord",
    "Rule",
    "RuleContext",
    "RuleVerdict",
    "StackView",
    "default_tags_of",
    "evaluate",
    "rules_markdown",
    "smallest_blocked_body",
    "supports_tags",
]

if __name__ == "__main__":
    print(rules_markdown(), end="")

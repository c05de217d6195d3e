"""Rules on the WAF: it lets through every request body the gateway accepts."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from infra.rules.base import (
    RuleContext,
    StackFinding,
    StackView,
    as_int,
    as_list,
    as_map,
    label,
    stack_rule,
)
from infra.rules.resource_types import HELM_RELEASE, WEB_ACL

# An ALB forwards at most this much of a body to the WAF (fixed; CloudFront's is 16-64 KB).
ALB_BODY_INSPECTION_BYTES = 8192
# The gateway's server.max_body_bytes when no Helm release sets it (app/config.py ServerConfig).
GATEWAY_DEFAULT_MAX_BODY_BYTES = 1_048_576
# Managed rules that block a body by size: group -> (rule, largest body it lets through).
MANAGED_BODY_SIZE_RULES = {"AWSManagedRulesCommonRuleSet": ("SizeRestrictions_BODY", 8192)}
_NON_BLOCKING_ACTIONS = ("count", "allow")
_COMPARISONS: dict[str, Callable[[int, int], bool]] = {
    "EQ": lambda a, b: a == b,
    "NE": lambda a, b: a != b,
    "LE": lambda a, b: a <= b,
    "LT": lambda a, b: a < b,
    "GE": lambda a, b: a >= b,
    "GT": lambda a, b: a > b,
}


def _gateway_body_limit(view: StackView) -> int:
    """`config.server.max_body_bytes` of the gateway's Helm release, else the gateway default."""
    for release in view.of_type(HELM_RELEASE):
        config = as_map(as_map(release.inputs.get("values")).get("config"))
        limit = as_map(config.get("server")).get("max_body_bytes")
        if limit is not None:
            return as_int(limit, GATEWAY_DEFAULT_MAX_BODY_BYTES)
    return GATEWAY_DEFAULT_MAX_BODY_BYTES


def _body_size_matches(size: int, statement: Mapping[str, Any]) -> bool:
    """Whether a size constraint on the body matches a body of `size` bytes behind an ALB."""
    body = as_map(as_map(statement.get("fieldToMatch")).get("body"))
    seen = size
    if size > ALB_BODY_INSPECTION_BYTES:
        handling = body.get("oversizeHandling") or "CONTINUE"
        if handling in ("MATCH", "NO_MATCH"):
            return handling == "MATCH"
        seen = ALB_BODY_INSPECTION_BYTES  # CONTINUE: the WAF measures what it was sent
    compare = _COMPARISONS.get(str(statement.get("comparisonOperator")))
    return compare is not None and compare(seen, as_int(statement.get("size"), 0))


def smallest_blocked_body(rule: Mapping[str, Any]) -> int | None:
    """The smallest body size (bytes) a web ACL rule blocks behind an ALB, or None."""
    statement = as_map(rule.get("statement"))
    managed = as_map(statement.get("managedRuleGroupStatement"))
    if managed:
        size_rule = MANAGED_BODY_SIZE_RULES.get(str(managed.get("name")))
        if size_rule is None or "count" in as_map(rule.get("overrideAction")):
            return None
        name, allowed = size_rule
        for override in as_list(managed.get("ruleActionOverrides")):
            override = as_map(override)
            action = as_map(override.get("actionToUse"))
            if override.get("name") == name and any(a in action for a in _NON_BLOCKING_ACTIONS):
                return None
        return allowed + 1
    size = as_map(statement.get("sizeConstraintStatement"))
    if not size or "body" not in as_map(size.get("fieldToMatch")):
        return None
    if "block" not in as_map(rule.get("action")):
        return None
    # The comparisons are monotone in the size the WAF sees: their breakpoints suffice.
    bound = as_int(size.get("size"), 0)
    candidates = {0, bound - 1, bound, bound + 1, ALB_BODY_INSPECTION_BYTES + 1}
    return min((c for c in candidates if c >= 0 and _body_size_matches(c, size)), default=None)


@stack_rule(
    "LIFTOFF_WAF_BODY_SIZE",
    "The WAF lets through every request body size the gateway accepts",
    "error",
    "override the managed SizeRestrictions_BODY rule to count and block by size only over the "
    "gateway's server.max_body_bytes (liftoff:maxBodyBytes; infra/waf.py does both).",
)
def waf_passes_gateway_bodies(view: StackView, context: RuleContext) -> Iterator[StackFinding]:
    limit: int | None = None
    for acl in view.of_type(WEB_ACL):
        for rule in as_list(acl.inputs.get("rules")):
            rule = as_map(rule)
            blocked = smallest_blocked_body(rule)
            if blocked is None:
                continue
            # Read only when needed: the release's values are unknown during a first preview.
            limit = _gateway_body_limit(view) if limit is None else limit
            if blocked <= limit:
                yield (
                    acl,
                    f"{label(acl)} rule {rule.get('name')} blocks {blocked}-byte bodies; the "
                    f"gateway accepts bodies up to {limit} bytes.",
                )

"""The load balancer's WAF web ACL: AWS managed rules, tuned so every request the gateway accepts
gets through.

Chat requests are large JSON bodies of free text. The core rule set blocks any body over 8 KB
(`SizeRestrictions_BODY`), and its other `*_BODY` rules (and those of the known-bad-inputs set)
match prompt text such as code, HTML, file paths or a question about Log4Shell. Those rules
count instead of block: their matches stay visible in the WAF metrics and sampled requests. The
gateway enforces its own body limit (`liftoff:maxBodyBytes`, 413 above it); an ALB forwards only
the first 8 KB of a body to the WAF, so a WAF size rule can enforce that limit only when it is
at most 8 KB, and then one blocks exactly the bodies over it.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_aws as aws

from infra.policies import ALB_BODY_INSPECTION_BYTES
from infra.settings import StackSettings
from infra.tags import tags

# AWS managed rule groups and their rules that inspect the request body.
MANAGED_RULE_GROUPS: dict[str, tuple[str, ...]] = {
    "AWSManagedRulesCommonRuleSet": (
        "SizeRestrictions_BODY",
        "EC2MetaDataSSRF_BODY",
        "GenericLFI_BODY",
        "GenericRFI_BODY",
        "CrossSiteScripting_BODY",
    ),
    "AWSManagedRulesKnownBadInputsRuleSet": ("JavaDeserializationRCE_BODY", "Log4JRCE_BODY"),
    "AWSManagedRulesAmazonIpReputationList": (),
}
BODY_SIZE_RULE = "BodyOverGatewayLimit"


def _visibility(metric: str) -> dict[str, Any]:
    return {
        "cloudwatch_metrics_enabled": True,
        "metric_name": metric,
        "sampled_requests_enabled": True,
    }


def body_size_rule(max_body_bytes: int, priority: int) -> dict[str, Any] | None:
    """A rule blocking bodies over `max_body_bytes`, or None when the WAF cannot see that far
    (the gateway's 413 is then the limit)."""
    if max_body_bytes > ALB_BODY_INSPECTION_BYTES:
        return None
    return {
        "name": BODY_SIZE_RULE,
        "priority": priority,
        "action": {"block": {}},
        "statement": {
            "size_constraint_statement": {
                "comparison_operator": "GT",
                "size": max_body_bytes,
                # Bodies over the inspection limit are over max_body_bytes too: block them.
                "field_to_match": {"body": {"oversize_handling": "MATCH"}},
                "text_transformations": [{"priority": 0, "type": "NONE"}],
            }
        },
        "visibility_config": _visibility(BODY_SIZE_RULE),
    }


def managed_rule(group: str, priority: int) -> dict[str, Any]:
    """A managed rule group whose body-inspecting rules count instead of block."""
    statement: dict[str, Any] = {"name": group, "vendor_name": "AWS"}
    if MANAGED_RULE_GROUPS[group]:
        statement["rule_action_overrides"] = [
            {"name": rule, "action_to_use": {"count": {}}} for rule in MANAGED_RULE_GROUPS[group]
        ]
    return {
        "name": group,
        "priority": priority,
        "override_action": {"none": {}},
        "statement": {"managed_rule_group_statement": statement},
        "visibility_config": _visibility(group),
    }


def web_acl_rules(settings: StackSettings) -> list[dict[str, Any]]:
    """The web ACL's rules in priority order: the body size rule (when the WAF can enforce it),
    then the managed groups."""
    size_rule = body_size_rule(settings.max_body_bytes, 0)
    rules = [size_rule] if size_rule else []
    first = len(rules)
    rules += [managed_rule(group, first + i) for i, group in enumerate(MANAGED_RULE_GROUPS)]
    return rules


def attach_web_acl(
    name: str, settings: StackSettings, alb: aws.lb.LoadBalancer, opts: pulumi.ResourceOptions
) -> aws.wafv2.WebAcl:
    """The web ACL (`<name>-waf`) and its association with `alb`, children as `opts` says."""
    s = settings
    acl = aws.wafv2.WebAcl(
        f"{name}-waf",
        name=f"{s.prefix}-alb",
        scope="REGIONAL",
        default_action={"allow": {}},
        rules=web_acl_rules(s),
        visibility_config=_visibility(f"{s.prefix}-alb"),
        tags=tags(s, f"{s.prefix}-waf"),
        opts=opts,
    )
    aws.wafv2.WebAclAssociation(
        f"{name}-waf-association", resource_arn=alb.arn, web_acl_arn=acl.arn, opts=opts
    )
    return acl

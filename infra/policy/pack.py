"""Adapt `infra.policies.RULES` to CrossGuard policies; the rule logic stays in infra/rules/.

Resource rules become `ResourceValidationPolicy`s and see one resource's inputs; rules that relate
resources become `StackValidationPolicy`s over the stack's resources (outputs, with property
dependencies that trace a node group's `subnetIds` to its subnets). Severity error maps to a
mandatory policy (blocks `pulumi up`), warning to advisory.

The rule context comes from what the engine passes: the environment is the stack name in the URN
(`urn:pulumi:<stack>::<project>::...`) when that is dev, staging or prod, whatever a tag says (a
prod stack tagged `environment=dev` still gets the prod-only rules); for other stack names it is
the resources' `environment` tag, else the stack name's suffix. The region and default tags come
from the aws provider.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    PolicyResource,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Severity,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UnknownValueError

from infra.policies import (
    AWS_PROVIDER,
    RULES,
    ResourceRecord,
    Rule,
    RuleContext,
    StackView,
    default_tags_of,
)

PACK_NAME = "liftoff"
PACK_DESCRIPTION = "Liftoff guardrails for AWS stacks (rule ids follow checkov)."
ENVIRONMENTS = ("dev", "staging", "prod")

ENFORCEMENT: dict[str, EnforcementLevel] = {
    "error": EnforcementLevel.MANDATORY,
    "warning": EnforcementLevel.ADVISORY,
}
SEVERITY: dict[str, Severity] = {"error": Severity.HIGH, "warning": Severity.MEDIUM}


def stack_of(urn: str) -> str:
    """`prod` from `urn:pulumi:prod::liftoff::aws:eks/cluster:Cluster::name`."""
    return urn.removeprefix("urn:pulumi:").split("::", 1)[0]


def environment_of(stack: str) -> str:
    """The environment a stack name stands for (`prod`, `acme-prod` -> prod); else the name."""
    suffix = stack.rsplit("/", 1)[-1].rsplit("-", 1)[-1]
    return suffix if suffix in ENVIRONMENTS else stack


def _safe_get(props: Mapping[str, Any], key: str) -> Any:
    """A prop that may still be unknown during preview (then None)."""
    try:
        return props.get(key)
    except UnknownValueError:
        return None


def _environment_tag(props: Mapping[str, Any]) -> str | None:
    tags = _safe_get(props, "tags")
    value = _safe_get(tags, "environment") if isinstance(tags, Mapping) else None
    return str(value) if value else None


def context_for(
    urn: str, provider_props: Mapping[str, Any] | None, environment: str | None = None
) -> RuleContext:
    """Rule context of a resource: environment from the stack name (dev, staging, prod), else its
    `environment` tag (the provider's default tags, else the stack name's suffix); region from the
    provider, else the AWS_REGION it would use."""
    props = provider_props or {}
    stack = stack_of(urn)
    region = (
        _safe_get(props, "region")
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
    )
    default_tags = default_tags_of({"defaultTags": _safe_get(props, "defaultTags")})
    return RuleContext(
        stack=stack,
        region=str(region) if region else None,
        environment=stack
        if stack in ENVIRONMENTS
        else environment or default_tags.get("environment") or environment_of(stack),
        default_tags=default_tags,
    )


def record_of(resource: PolicyResource) -> ResourceRecord:
    resource_id = _safe_get(resource.props, "id")
    return ResourceRecord(
        type=resource.resource_type,
        name=resource.name,
        inputs=resource.props,
        urn=resource.urn,
        parent=resource.parent.urn if resource.parent else None,
        id=str(resource_id) if resource_id else None,
        property_dependencies={
            prop: [dep.urn for dep in deps] for prop, deps in resource.property_dependencies.items()
        },
    )


def stack_context(resources: Sequence[PolicyResource]) -> RuleContext:
    """Context from the aws provider of any resource (default or explicit)."""
    urn = resources[0].urn if resources else "urn:pulumi:unknown::"
    environment = next(filter(None, (_environment_tag(r.props) for r in resources)), None)
    for resource in resources:
        if resource.provider is not None and resource.provider.resource_type == AWS_PROVIDER:
            return context_for(resource.urn, resource.provider.props, environment)
        if resource.resource_type == AWS_PROVIDER:
            return context_for(resource.urn, resource.props, environment)
    return context_for(urn, None, environment)


def _validate_resource(rule: Rule) -> Callable[[ResourceValidationArgs, ReportViolation], None]:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        if not rule.applies_to(args.resource_type):
            return
        provider_props = args.provider.props if args.provider else None
        context = context_for(args.urn, provider_props, _environment_tag(args.props))
        if not rule.applies(context):
            return
        record = ResourceRecord(args.resource_type, args.name, args.props, urn=args.urn)
        for finding in rule.resource_findings(record, context):
            report_violation(finding.message, None)

    return validate


def _validate_stack(rule: Rule) -> Callable[[StackValidationArgs, ReportViolation], None]:
    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        context = stack_context(args.resources)
        if not rule.applies(context):
            return
        view = StackView([record_of(r) for r in args.resources])
        for finding in rule.stack_findings(view, context):
            report_violation(finding.message, finding.urn or None)

    return validate


def policy_for(rule: Rule) -> Policy:
    common: dict[str, Any] = {
        "name": rule.id,
        "description": rule.title,
        "enforcement_level": ENFORCEMENT[rule.severity],
        "severity": SEVERITY[rule.severity],
        "remediation_steps": rule.fix,
        "tags": [*rule.also, "production-only"] if rule.production_only else list(rule.also),
    }
    if rule.check_stack is not None:
        return StackValidationPolicy(validate=_validate_stack(rule), **common)
    return ResourceValidationPolicy(validate=_validate_resource(rule), **common)


def build_policies() -> list[Policy]:
    """One CrossGuard policy per rule, in rule order."""
    return [policy_for(rule) for rule in RULES]

"""Adapt `infra.policies.RULES` to CrossGuard policies; the rule logic stays in infra/policies.py.

Resource rules become `ResourceValidationPolicy`s and see one resource's inputs; rules that relate
resources become `StackValidationPolicy`s over the stack's resources (outputs, with property
dependencies that trace a node group's `subnetIds` to its subnets). Severity error maps to a
mandatory policy (blocks `pulumi up`), warning to advisory.

The rule context comes from what the engine passes: the stack name from the URN
(`urn:pulumi:<stack>::<project>::...`), the region and default tags from the aws provider.
"""

from __future__ import annotations

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


def context_for(urn: str, provider_props: Mapping[str, Any] | None) -> RuleContext:
    props = provider_props or {}
    stack = stack_of(urn)
    region = _safe_get(props, "region")
    return RuleContext(
        stack=stack,
        region=str(region) if region else None,
        environment=environment_of(stack),
        default_tags=default_tags_of({"defaultTags": _safe_get(props, "defaultTags")}),
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
    for resource in resources:
        if resource.provider is not None and resource.provider.resource_type == AWS_PROVIDER:
            return context_for(resource.urn, resource.provider.props)
        if resource.resource_type == AWS_PROVIDER:
            return context_for(resource.urn, resource.props)
    return context_for(urn, None)


def _validate_resource(rule: Rule) -> Callable[[ResourceValidationArgs, ReportViolation], None]:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        if not rule.applies_to(args.resource_type):
            return
        context = context_for(args.urn, args.provider.props if args.provider else None)
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

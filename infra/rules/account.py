"""Rules on cost, tags and region: a cost budget, the required tags, US regions only."""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Iterator

from infra.rules.base import (
    REQUIRED_TAGS,
    ResourceRecord,
    RuleContext,
    StackFinding,
    StackView,
    as_list,
    as_map,
    label,
    resource_rule,
    stack_rule,
)
from infra.rules.resource_types import AWS_PROVIDER, BUDGET

US_REGIONS = ("us-east-1", "us-east-2", "us-west-1", "us-west-2")


@stack_rule(
    "LIFTOFF_BUDGET",
    "A monthly cost budget with notifications exists",
    "error",
    "keep the stack's aws.budgets.Budget (liftoff:monthlyBudgetUsd, liftoff:budgetThresholds).",
)
def budget_exists(view: StackView, context: RuleContext) -> Iterator[StackFinding]:
    budgets = [b for b in view.of_type(BUDGET) if b.inputs.get("budgetType", "COST") == "COST"]
    if not budgets:
        yield None, "The stack declares no AWS Budgets cost budget."
        return
    for budget in budgets:
        if not as_list(budget.inputs.get("notifications")):
            yield budget, f"{label(budget)} sends no notifications."


@functools.cache
def supports_tags(resource_type: str) -> bool:
    """Whether a pulumi-aws resource type takes a `tags` map (read from the SDK's signatures)."""
    if not resource_type.startswith("aws:") or resource_type.count(":") != 2:
        return False
    _, module_path, class_name = resource_type.split(":")
    module = module_path.split("/")[0]
    try:
        package = importlib.import_module(
            "pulumi_aws" if module == "index" else f"pulumi_aws.{module}"
        )
    except ImportError:
        return False
    cls = getattr(package, class_name, None)
    init = getattr(cls, "_internal_init", None)
    if init is None:
        return False
    return "tags" in inspect.signature(init).parameters


@resource_rule(
    "LIFTOFF_TAGS",
    "Every taggable AWS resource carries the required tags",
    "error",
    [],
    "tag it with " + ", ".join(REQUIRED_TAGS) + " (the stack's provider default tags do this).",
    scope="every taggable AWS resource",
)
def required_tags(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    if not supports_tags(resource.type):
        return
    tags = {**context.default_tags, **as_map(resource.inputs.get("tags"))}
    missing = [t for t in context.required_tags if not tags.get(t)]
    if missing:
        yield f"{label(resource)} lacks tags: {', '.join(missing)}."


@stack_rule(
    "LIFTOFF_US_REGION",
    "The stack deploys to a US region",
    "error",
    "set aws:region to one of " + ", ".join(US_REGIONS) + ".",
)
def us_region(view: StackView, context: RuleContext) -> Iterator[StackFinding]:
    if context.region not in US_REGIONS:
        yield None, f"Stack region {context.region or '(unset)'} is not a US region."


@resource_rule(
    "LIFTOFF_RESOURCE_US_REGION",
    "No resource or aws provider is placed outside the US regions",
    "error",
    [],
    "drop the resource's region input (it then uses the stack's aws:region) or set one of "
    + ", ".join(US_REGIONS)
    + ".",
    scope="every AWS resource and aws provider with its own region",
)
def resource_in_us_region(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    # pulumi-aws v7 gives most resources their own `region`, overriding the provider's.
    if not (resource.type.startswith("aws:") or resource.type == AWS_PROVIDER):
        return
    region = resource.inputs.get("region")
    if region and region not in US_REGIONS:
        yield f"{label(resource)} is placed in {region}, not a US region."

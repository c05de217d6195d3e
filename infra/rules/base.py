"""The rule framework: resource records, rules and their registry (`RULES`, filled by the
decorators), value helpers for rule checks, evaluation and the rule reference."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["error", "warning"]

REQUIRED_TAGS = ("project", "environment")
PRODUCTION_ENVIRONMENTS = ("prod", "production")


@dataclass(frozen=True)
class ResourceRecord:
    """One resource as declared: `inputs` are camelCase, as the engine sends them.

    `property_dependencies` maps an input name to the URNs of the resources it was computed from
    (how a node group's `subnetIds` are traced back to subnets); `id` is known only for resources
    that exist (CrossGuard stack validation after an update, mocks).
    """

    type: str
    name: str
    inputs: Mapping[str, Any]
    urn: str = ""
    parent: str | None = None
    id: str | None = None
    property_dependencies: Mapping[str, Sequence[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class RuleContext:
    """What environment-aware rules need to know about the stack being checked."""

    stack: str
    region: str | None
    environment: str
    default_tags: Mapping[str, str] = field(default_factory=dict)
    required_tags: tuple[str, ...] = REQUIRED_TAGS
    # True under the mock runtime (`make plan`): rules with an `offline_severity` use it there.
    offline: bool = False

    @property
    def is_production(self) -> bool:
        return self.environment in PRODUCTION_ENVIRONMENTS


@dataclass(frozen=True)
class Finding:
    """One failed check: `resource` is the resource's name, or "stack" for stack-wide findings."""

    rule: str
    severity: Severity
    resource: str
    message: str
    resource_type: str = ""
    urn: str = ""


class StackView:
    """The whole resource list, with lookups used by rules that relate resources."""

    def __init__(self, resources: Sequence[ResourceRecord]) -> None:
        self.resources = list(resources)
        self._by_urn = {r.urn: r for r in self.resources if r.urn}
        self._by_id = {r.id: r for r in self.resources if r.id}

    def of_type(self, *types: str) -> list[ResourceRecord]:
        return [r for r in self.resources if r.type in types]

    def referenced(self, resource: ResourceRecord, prop: str) -> list[ResourceRecord] | None:
        """Resources that input `prop` refers to, or None when that cannot be traced."""
        urns = resource.property_dependencies.get(prop)
        if urns:
            found = [self._by_urn[u] for u in urns if u in self._by_urn]
            if found:
                return found
        values = as_list(resource.inputs.get(prop))
        found = [self._by_id[v] for v in values if isinstance(v, str) and v in self._by_id]
        return found or None


# What a stack check yields: the offending resource (None: the stack as a whole), a message.
StackFinding = tuple[ResourceRecord | None, str]
ResourceCheck = Callable[[ResourceRecord, RuleContext], Iterable[str]]
StackCheck = Callable[[StackView, RuleContext], Iterable[StackFinding]]


@dataclass(frozen=True)
class Rule:
    """Checks each resource of `types` (`check_resource`) or the whole stack (`check_stack`)."""

    id: str
    title: str
    severity: Severity
    fix: str
    types: tuple[str, ...] = ()
    check_resource: ResourceCheck | None = None
    check_stack: StackCheck | None = None
    production_only: bool = False
    also: tuple[str, ...] = ()  # other scanners' ids covering the same control
    # Severity in an offline plan, for values only the user can supply (a certificate): a fresh
    # clone plans clean while a real preview or up is blocked.
    offline_severity: Severity | None = None
    # What the rule reference says it applies to, where `types` cannot (every AWS resource).
    scope: str = ""

    def severity_in(self, context: RuleContext) -> Severity:
        if context.offline and self.offline_severity is not None:
            return self.offline_severity
        return self.severity

    def applies(self, context: RuleContext) -> bool:
        return context.is_production or not self.production_only

    def applies_to(self, resource_type: str) -> bool:
        return self.check_resource is not None and (not self.types or resource_type in self.types)

    def resource_findings(self, resource: ResourceRecord, context: RuleContext) -> list[Finding]:
        assert self.check_resource is not None
        return [
            self._finding(resource, message, context)
            for message in self.check_resource(resource, context)
        ]

    def stack_findings(self, view: StackView, context: RuleContext) -> list[Finding]:
        assert self.check_stack is not None
        return [
            self._finding(resource, message, context)
            for resource, message in self.check_stack(view, context)
        ]

    def _finding(
        self, resource: ResourceRecord | None, message: str, context: RuleContext
    ) -> Finding:
        return Finding(
            rule=self.id,
            severity=self.severity_in(context),
            resource=resource.name if resource else "stack",
            message=f"{message} Fix: {self.fix}",
            resource_type=resource.type if resource else "",
            urn=resource.urn if resource else "",
        )


RULES: list[Rule] = []


def resource_rule(
    rule_id: str,
    title: str,
    severity: Severity,
    types: Sequence[str],
    fix: str,
    *,
    production_only: bool = False,
    also: Sequence[str] = (),
    offline_severity: Severity | None = None,
    scope: str = "",
) -> Callable[[ResourceCheck], ResourceCheck]:
    def register(check: ResourceCheck) -> ResourceCheck:
        RULES.append(
            Rule(
                rule_id,
                title,
                severity,
                fix,
                tuple(types),
                check_resource=check,
                production_only=production_only,
                also=tuple(also),
                offline_severity=offline_severity,
                scope=scope,
            )
        )
        return check

    return register


def stack_rule(
    rule_id: str,
    title: str,
    severity: Severity,
    fix: str,
    *,
    production_only: bool = False,
    also: Sequence[str] = (),
    offline_severity: Severity | None = None,
) -> Callable[[StackCheck], StackCheck]:
    def register(check: StackCheck) -> StackCheck:
        RULES.append(
            Rule(
                rule_id,
                title,
                severity,
                fix,
                check_stack=check,
                production_only=production_only,
                also=tuple(also),
                offline_severity=offline_severity,
            )
        )
        return check

    return register


# --- value helpers -----------------------------------------------------------------------
# Inputs are read only through `Mapping`/`Sequence` methods so that CrossGuard's proxies can
# stand in for plain dicts (a value unknown during preview raises where it is read).


def is_true(value: Any) -> bool:
    """Pulumi sends some booleans as strings (launch template `ebs.encrypted`)."""
    return value is True or (isinstance(value, str) and value.lower() == "true")


def as_list(value: Any) -> list[Any]:
    if value is None or isinstance(value, str | bytes | Mapping):
        return [] if value is None else [value]
    if isinstance(value, Sequence):
        return list(value)
    return [value]


def as_map(value: Any) -> Mapping[str, Any]:
    if isinstance(value, Mapping):
        return value
    if isinstance(value, str) and value.startswith("{"):
        # Provider config objects (defaultTags) arrive JSON-encoded.
        decoded = json.loads(value)
        return decoded if isinstance(decoded, Mapping) else {}
    return {}


def label(resource: ResourceRecord) -> str:
    short = resource.type.rsplit(":", 1)[-1]
    return f"{short} '{resource.name}'"


def is_world(cidr: Any) -> bool:
    if not isinstance(cidr, str):
        return False
    try:
        return ipaddress.ip_network(cidr, strict=False).prefixlen == 0
    except ValueError:
        return False


def as_int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


# --- evaluation --------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleVerdict:
    """A rule's outcome on one stack: `checked` counts resources examined (stack rules: 1)."""

    rule: Rule
    applicable: bool
    checked: int
    findings: tuple[Finding, ...]

    @property
    def passed(self) -> bool:
        return not self.findings


def evaluate(resources: Sequence[ResourceRecord], context: RuleContext) -> list[RuleVerdict]:
    """Every rule over every resource it applies to, in rule order."""
    view = StackView(resources)
    verdicts: list[RuleVerdict] = []
    for rule in RULES:
        if not rule.applies(context):
            verdicts.append(RuleVerdict(rule, False, 0, ()))
            continue
        if rule.check_stack is not None:
            verdicts.append(RuleVerdict(rule, True, 1, tuple(rule.stack_findings(view, context))))
            continue
        targets = [r for r in resources if rule.applies_to(r.type)]
        findings = [f for r in targets for f in rule.resource_findings(r, context)]
        verdicts.append(RuleVerdict(rule, True, len(targets), tuple(findings)))
    return verdicts


def default_tags_of(provider_inputs: Mapping[str, Any]) -> dict[str, str]:
    """`defaultTags.tags` of an aws provider's inputs (objects may arrive JSON-encoded)."""
    tags = as_map(as_map(provider_inputs.get("defaultTags")).get("tags"))
    return {str(k): str(v) for k, v in tags.items()}


# --- reference docs ----------------------------------------------------------------------


def rules_markdown() -> str:
    """The rule reference (infra/policy/README.md and the CrossGuard pack's readme)."""
    lines = [
        "# Liftoff policy rules",
        "",
        "<!-- Generated by `python -m infra.policies > infra/policy/README.md`; "
        "tests/infra/test_policies.py fails when it is stale. -->",
        "",
        "One rule set (`infra/rules/`, one module per concern) checked by the offline plan "
        "(`make plan STACK=<env>`) "
        "and enforced for real by this CrossGuard pack: "
        "`pulumi preview --policy-pack infra/policy` (or `pulumi up --policy-pack infra/policy`). "
        "Severity error is a mandatory policy (blocks the update), warning is advisory. "
        "Ids follow checkov where it has a matching check; `LIFTOFF_*` rules have no checkov "
        "equivalent. Prod-only rules apply on the stack named prod, whatever its tags say, and on "
        "a stack of another name whose `environment` tag (else a `-prod` name suffix) is prod.",
        "",
        "| Rule | Also | Severity | Applies to | Checks | Fix |",
        "|---|---|---|---|---|---|",
    ]
    for rule in RULES:
        scope = ", ".join(f"`{t}`" for t in rule.types) if rule.check_resource else "the stack"
        scope = rule.scope or scope
        if rule.production_only:
            scope += " (prod only)"
        row = [f"`{rule.id}`", ", ".join(rule.also), rule.severity, scope, rule.title, rule.fix]
        cells = (cell.replace("|", "\\|").replace("<", "&lt;") for cell in row)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

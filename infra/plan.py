"""Offline plan of a stack: `python -m infra.plan --stack <env> [--set KEY=VALUE ...] [--json]`.

Runs the real program under Pulumi's mock runtime (`infra.mocking.run_program`, no cloud account,
no Pulumi CLI), then reports the declared resources grouped by component, the verdict of every
policy rule (`infra.policies`) and a monthly cost estimate (`infra.cost`).

`--set` overrides any config key for a what-if (`aws:region=us-west-2`,
`liftoff:nodeDesiredSize=4`, `liftoff:nodeInstanceTypes=[m7g.large]`); values are read as YAML
scalars or JSON and handed to the program as the strings `pulumi config set` would store.

Exit status: 2 invalid config (message on stderr), 1 an error-severity policy fails, 0 otherwise.
Secret inputs and outputs, and any copy of a secret value elsewhere, are shown as `[secret]`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from infra import readiness
from infra.console_table import stdout_console
from infra.cost import CostEstimate, estimate
from infra.mocking import ProgramRun, RecordedResource, run_program
from infra.policies import (
    AWS_PROVIDER,
    Finding,
    ResourceRecord,
    RuleContext,
    RuleVerdict,
    default_tags_of,
    evaluate,
)
from infra.settings import SECRET_KEYS, SettingsError, StackSettings

SECRET = "[secret]"
_PATH_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


@dataclass(frozen=True)
class PlannedResource:
    type: str
    name: str
    parent: str | None  # name of the parent component; None at the stack's top level
    parent_type: str | None  # its type: components share the stack's name prefix
    component: str  # top-level component, "<Type> <name>" ("stack" when declared at top level)
    is_component: bool  # a ComponentResource (no cloud object of its own)
    inputs: dict[str, Any]  # secrets already replaced by "[secret]"


@dataclass(frozen=True)
class PlanReport:
    """Everything both outputs show; built once by `build_plan`."""

    stack: str
    settings: StackSettings
    resources: list[PlannedResource]
    verdicts: list[RuleVerdict]
    cost: CostEstimate
    outputs: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    # Values only the user can supply (infra.readiness): a real run refuses until they are set.
    warnings: list[str] = field(default_factory=list)

    @property
    def region(self) -> str:
        return self.settings.region

    @property
    def findings(self) -> list[Finding]:
        return [f for v in self.verdicts for f in v.findings]

    @property
    def violations(self) -> int:
        return sum(1 for f in self.findings if f.severity == "error")


class PlanInputError(ValueError):
    """A malformed command-line argument (exit 2, like invalid config)."""


# --- --set parsing -------------------------------------------------------------------------


def add_set_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """The repeatable `--set KEY=VALUE` option (read with `parse_overrides`)."""
    parser.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=help_text,
    )


def parse_overrides(assignments: Iterable[str]) -> dict[str, str]:
    """`KEY=VALUE` pairs -> config strings, as `pulumi config set KEY VALUE` would store them."""
    overrides: dict[str, str] = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        key = key.strip()
        if not sep or ":" not in key:
            raise PlanInputError(
                f"--set {assignment}: expected KEY=VALUE with a namespaced key, "
                "e.g. liftoff:nodeDesiredSize=3 or aws:region=us-west-2"
            )
        overrides[key] = _config_text(key, text)
    return overrides


def _config_text(key: str, text: str) -> str:
    """Flow collections and quoted strings are parsed as YAML/JSON; anything else stays verbatim
    (so a secret containing ': ' or '#' is never reinterpreted)."""
    stripped = text.strip()
    if stripped[:1] not in ("[", "{", "'", '"'):
        return stripped
    try:
        value = yaml.safe_load(stripped)
    except yaml.YAMLError as exc:
        shown = SECRET if key in SECRET_KEYS else text
        problem = getattr(exc, "problem", None) or "unparsable"
        raise PlanInputError(f"--set {key}={shown}: not a YAML/JSON value ({problem})") from None
    return value if isinstance(value, str) else json.dumps(value)


# --- building the report -------------------------------------------------------------------


def _path_tokens(path: str) -> list[str | int]:
    return [name if name else int(index) for name, index in _PATH_TOKEN.findall(path)]


def _take_secret(inputs: dict[str, Any], path: str, found: set[str]) -> None:
    """Replace the value at `path` by "[secret]", remembering the plaintext to scrub elsewhere."""
    tokens = _path_tokens(path)
    node: Any = inputs
    for token in tokens[:-1]:
        try:
            node = node[token]
        except (KeyError, IndexError, TypeError):
            return
    last = tokens[-1] if tokens else None
    try:
        value = node[last]
    except (KeyError, IndexError, TypeError):
        return
    _collect_strings(value, found)
    node[last] = SECRET


def _collect_strings(value: Any, found: set[str]) -> None:
    if isinstance(value, str):
        found.add(value)
    elif isinstance(value, Mapping):
        for item in value.values():
            _collect_strings(item, found)
    elif isinstance(value, list | tuple):
        for item in value:
            _collect_strings(item, found)
    elif value is not None and not isinstance(value, bool):
        found.add(str(value))


def _scrub(value: Any, secrets: Sequence[str]) -> Any:
    """Replace any copy of a secret value (whole or embedded, e.g. in JSON) by "[secret]"."""
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, SECRET)
        return value
    if isinstance(value, Mapping):
        return {k: _scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v, secrets) for v in value]
    return value


def _plain(value: Any) -> Any:
    """JSON-safe copy of a deserialized input; whole floats (the wire has no ints) become ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)  # assets, archives


def mock_resource_ids(run: ProgramRun) -> dict[str, str]:
    """Ids the mocks gave the cloud resources (deterministic), to trace id-valued inputs."""
    return {
        r.urn: r.id
        for r in run.resources
        if r.custom and r.id and not r.type.startswith("pulumi:providers:")
    }


def policy_records(run: ProgramRun) -> list[ResourceRecord]:
    """The program's resources as the policy rules see them, with the ids the mocks gave them."""
    ids = mock_resource_ids(run)
    return [
        ResourceRecord(
            type=r.type,
            name=r.name,
            inputs=r.inputs,
            urn=r.urn,
            parent=r.parent_urn or None,
            id=ids.get(r.urn),
        )
        for r in run.resources
    ]


def _top_component(resource: RecordedResource, by_urn: Mapping[str, RecordedResource]) -> str:
    current = resource
    while current.parent_urn in by_urn:
        current = by_urn[current.parent_urn]
    if current is resource and resource.custom:
        return "stack"
    # Components share the stack's name prefix; their type tells them apart.
    return f"{current.type.rsplit(':', 1)[-1]} {current.name}"


def _context(run: ProgramRun, settings: StackSettings, stack: str) -> RuleContext:
    default_tags: dict[str, str] = {}
    for resource in run.resources:
        if resource.type == AWS_PROVIDER:
            default_tags.update(default_tags_of(resource.inputs))
    return RuleContext(
        stack=stack,
        region=settings.region,
        environment=settings.environment,
        default_tags=default_tags,
        offline=True,
    )


def _secret_values(run: ProgramRun, settings: StackSettings) -> tuple[list[str], dict[str, Any]]:
    """Inputs with secret paths redacted, and every secret plaintext seen (longest first)."""
    found: set[str] = set()
    redacted: dict[str, Any] = {}
    for resource in run.resources:
        inputs = _plain(resource.inputs)
        for path in sorted(resource.secret_inputs):
            _take_secret(inputs, path, found)
        redacted[resource.urn] = inputs
    for secret in (
        settings.llm_api_key,
        settings.client_keys,
        *settings.provider_api_keys.values(),
    ):
        if secret is not None:
            found.add(secret.get_secret_value())
    # Short strings ("true", "1") would scrub unrelated text; real secrets are long.
    return sorted((s for s in found if len(s) >= 8), key=len, reverse=True), redacted


def build_plan(stack: str, overrides: Mapping[str, str] | None = None) -> PlanReport:
    """Run the program for `stack` under mocks and gather resources, verdicts and cost.

    Raises SettingsError when the config (stack file + overrides) is invalid.
    """
    run = run_program(stack, overrides)
    assert run.settings is not None
    settings = run.settings
    by_urn = {r.urn: r for r in run.resources}
    secrets, redacted = _secret_values(run, settings)

    records = policy_records(run)
    verdicts = evaluate(records, _context(run, settings, stack))
    planned = [
        PlannedResource(
            type=r.type,
            name=r.name,
            parent=by_urn[r.parent_urn].name if r.parent_urn in by_urn else None,
            parent_type=by_urn[r.parent_urn].type if r.parent_urn in by_urn else None,
            component=_top_component(r, by_urn),
            is_component=not r.custom,
            inputs=_scrub(redacted[r.urn], secrets),
        )
        for r in run.resources
    ]
    outputs = {
        name: SECRET if name in run.secret_outputs else _scrub(_plain(value), secrets)
        for name, value in run.outputs.items()
    }
    warnings = [b.message for b in readiness.blockers(settings, stack)]
    # The program logs each blocker too; the plan shows it once, as a warning.
    notes = [
        n for n in (settings.az_note, *run.warnings) if n and not any(w in n for w in warnings)
    ]
    notes = list(dict.fromkeys(_scrub(n, secrets) for n in notes))
    return PlanReport(
        stack=stack,
        settings=settings,
        resources=planned,
        verdicts=[_scrub_verdict(v, secrets) for v in verdicts],
        cost=estimate(records, settings.region),
        outputs=outputs,
        notes=notes,
        warnings=[_scrub(w, secrets) for w in warnings],
    )


def _scrub_verdict(verdict: RuleVerdict, secrets: Sequence[str]) -> RuleVerdict:
    findings = tuple(
        Finding(f.rule, f.severity, f.resource, _scrub(f.message, secrets), f.resource_type, f.urn)
        for f in verdict.findings
    )
    return RuleVerdict(verdict.rule, verdict.applicable, verdict.checked, findings)


# --- outputs -------------------------------------------------------------------------------


def _rule_status(verdict: RuleVerdict) -> str:
    if not verdict.applicable:
        return "not applicable"
    if verdict.checked == 0:
        return "no resources"
    return "pass" if verdict.passed else "fail"


def report_json(report: PlanReport) -> dict[str, Any]:
    cost = report.cost
    return {
        "stack": report.stack,
        "region": report.region,
        "environment": report.settings.environment,
        "resources": [
            {
                "type": r.type,
                "name": r.name,
                "parent": r.parent,
                "parent_type": r.parent_type,
                "inputs": r.inputs,
            }
            for r in report.resources
        ],
        "policies": [
            {"rule": f.rule, "severity": f.severity, "resource": f.resource, "message": f.message}
            for f in report.findings
        ],
        "violations": report.violations,
        "rules": [
            {
                "rule": v.rule.id,
                "title": v.rule.title,
                "severity": v.rule.offline_severity or v.rule.severity,
                "real_run_severity": v.rule.severity,
                "status": _rule_status(v),
                "checked": v.checked,
                "also": list(v.rule.also),
            }
            for v in report.verdicts
        ],
        "cost": {
            "monthly_usd": cost.monthly_usd,
            "range_usd": list(cost.range_usd),
            "items": [
                {
                    "resource": i.resource,
                    "description": i.description,
                    "monthly_usd": i.monthly_usd,
                    **({"range_usd": list(i.range_usd)} if i.range_usd else {}),
                }
                for i in cost.items
            ],
            "unpriced": [i.resource for i in cost.unpriced],
            "source": cost.source,
            "as_of": cost.as_of,
            "excluded": cost.excluded,
        },
        "outputs": report.outputs,
        "warnings": report.warnings,
        "notes": [*report.notes, *cost.notes],
    }


# Inputs worth a glance per type (dotted paths); other types show their first scalar inputs.
KEY_INPUTS: dict[str, tuple[str, ...]] = {
    "aws:ec2/vpc:Vpc": ("cidrBlock",),
    "aws:ec2/subnet:Subnet": ("cidrBlock", "availabilityZone", "mapPublicIpOnLaunch"),
    "aws:ec2/vpcEndpoint:VpcEndpoint": ("serviceName", "vpcEndpointType"),
    "aws:eks/cluster:Cluster": (
        "version",
        "vpcConfig.endpointPublicAccess",
        "vpcConfig.publicAccessCidrs",
        "enabledClusterLogTypes",
    ),
    "aws:eks/nodeGroup:NodeGroup": ("instanceTypes", "capacityType", "scalingConfig"),
    "aws:ec2/launchTemplate:LaunchTemplate": (
        "metadataOptions.httpTokens",
        "metadataOptions.httpPutResponseHopLimit",
        "blockDeviceMappings[0].ebs.volumeSize",
        "blockDeviceMappings[0].ebs.encrypted",
    ),
    "aws:elasticache/replicationGroup:ReplicationGroup": (
        "engine",
        "engineVersion",
        "nodeType",
        "numCacheClusters",
        "automaticFailoverEnabled",
        "transitEncryptionEnabled",
        "atRestEncryptionEnabled",
        "authTokenWo",
    ),
    "aws:lb/loadBalancer:LoadBalancer": (
        "internal",
        "idleTimeout",
        "dropInvalidHeaderFields",
        "enableDeletionProtection",
        "accessLogs.enabled",
    ),
    "aws:lb/listener:Listener": ("port", "protocol", "sslPolicy", "defaultActions[0].type"),
    "aws:lb/targetGroup:TargetGroup": (
        "port",
        "targetType",
        "healthCheck.path",
        "deregistrationDelay",
    ),
    "aws:kms/key:Key": ("enableKeyRotation", "deletionWindowInDays"),
    "aws:secretsmanager/secret:Secret": ("name",),
    "aws:budgets/budget:Budget": ("limitAmount", "timeUnit"),
    "aws:cloudwatch/metricAlarm:MetricAlarm": ("metricName", "threshold"),
    "kubernetes:helm.sh/v3:Release": ("chart", "version", "namespace"),
}
_SKIPPED_KEYS = {"tags", "name", "__defaults"}


def _at(inputs: Any, path: str) -> Any:
    node = inputs
    for token in _path_tokens(path):
        try:
            node = node[token]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= 48 else text[:45] + "..."


def key_settings(resource: PlannedResource) -> str:
    paths = KEY_INPUTS.get(resource.type)
    if paths is None:
        paths = tuple(
            k
            for k, v in resource.inputs.items()
            if k not in _SKIPPED_KEYS and isinstance(v, str | int | float | bool)
        )[:3]
    shown = [(p.rsplit(".", 1)[-1], _at(resource.inputs, p)) for p in paths]
    return ", ".join(f"{name}={_short(value)}" for name, value in shown if value is not None)


def render(report: PlanReport, console: Console) -> None:
    """Rich tables; every value from the program is escaped ("[secret]" is text, not markup)."""
    s = report.settings
    console.print(
        f"[bold]Liftoff plan[/bold] stack [cyan]{report.stack}[/cyan] "
        f"({s.environment}, {report.region}, {s.effective_az_count} AZs) - "
        f"{len(report.resources)} resources"
    )
    resources = Table(title="Resources by component", show_lines=False)
    for column in ("component", "type", "name", "key settings"):
        resources.add_column(column, overflow="fold")
    order = {name: i for i, name in enumerate(dict.fromkeys(r.component for r in report.resources))}
    component = None
    rows = [r for r in report.resources if not (r.is_component and r.parent is None)]
    for r in sorted(rows, key=lambda r: (r.component != "stack", order[r.component])):
        if component is not None and r.component != component:
            resources.add_section()
        shown = r.component if r.component != component else ""
        component = r.component
        resources.add_row(*map(escape, (shown, r.type, r.name, key_settings(r))))
    console.print(resources)

    rules = Table(title=f"Policies ({report.violations} error-severity violations)")
    for column in ("rule", "severity", "status", "title"):
        rules.add_column(column, overflow="fold")
    colours = {"pass": "green", "fail": "red", "not applicable": "dim", "no resources": "dim"}
    for v in report.verdicts:
        status = _rule_status(v)
        rules.add_row(
            v.rule.id,
            v.rule.offline_severity or v.rule.severity,
            f"[{colours[status]}]{status}[/]",
            escape(v.rule.title),
        )
    console.print(rules)
    if report.findings:
        findings = Table(title="Findings")
        for column in ("rule", "severity", "resource", "message"):
            findings.add_column(column, overflow="fold")
        for f in report.findings:
            colour = "red" if f.severity == "error" else "yellow"
            findings.add_row(
                f.rule, f"[{colour}]{f.severity}[/]", escape(f.resource), escape(f.message)
            )
        console.print(findings)

    cost = report.cost
    costs = Table(
        title=f"Monthly cost estimate (on-demand, {report.region}, prices as of {cost.as_of})"
    )
    costs.add_column("resource", overflow="fold")
    costs.add_column("description", overflow="fold")
    costs.add_column("USD / month", justify="right")
    # Biggest first; unpriced lines on top so they are not missed.
    for item in sorted(
        cost.items, key=lambda i: -(i.monthly_usd if i.monthly_usd is not None else 1e12)
    ):
        amount = "no price" if item.monthly_usd is None else f"{item.monthly_usd:,.2f}"
        costs.add_row(escape(item.resource), escape(item.description), amount)
    low, high = cost.range_usd
    costs.add_section()
    costs.add_row(
        "[bold]total[/bold]",
        f"nodes at min..max: {low:,.2f}..{high:,.2f}",
        f"[bold]{cost.monthly_usd:,.2f}[/bold]",
    )
    console.print(costs)
    console.print(f"[dim]Not included: {escape(cost.excluded)}.[/dim]")

    if report.outputs:
        outputs = Table(title="Stack outputs")
        outputs.add_column("output")
        outputs.add_column("value", overflow="fold")
        for name, value in report.outputs.items():
            outputs.add_row(escape(name), escape(_short(value)))
        console.print(outputs)
    for warning in report.warnings:
        console.print(f"[bold yellow]warning:[/bold yellow] {escape(warning)}")
    for note in [*report.notes, *cost.notes]:
        console.print(f"[yellow]note:[/yellow] {escape(note)}")


# --- command line --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.plan",
        description="Offline plan of a Liftoff stack: resources, policy verdicts, monthly cost.",
    )
    parser.add_argument(
        "--stack", default="dev", help="stack name: dev, staging, prod (Pulumi.<stack>.yaml)"
    )
    add_set_argument(
        parser, "override a config key for a what-if, e.g. aws:region=us-west-2 (repeatable)"
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    args = parser.parse_args(argv)

    try:
        report = build_plan(args.stack, parse_overrides(args.assignments))
    except (SettingsError, PlanInputError) as exc:
        print(f"infra.plan: {exc}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(json.dumps(report_json(report), indent=2) + "\n")
    else:
        render(report, stdout_console())
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())

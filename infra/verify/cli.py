"""`python -m infra.verify --stack <env> [--outputs FILE] [--json]`: every check, the table or
the JSON list, the exit status."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console

from infra.console_table import status_table, stdout_console
from infra.preflight import load_settings_for, stack_config_value
from infra.settings import SettingsError, StackSettings
from infra.verify.cache import cache_checks
from infra.verify.checks import VERDICTS, Check, Clients, Target, compare
from infra.verify.cluster import cluster_checks, node_group_checks
from infra.verify.loadbalancer import load_balancer_checks
from infra.verify.observability import alarm_checks, budget_checks, topic_checks
from infra.verify.outputs import OutputsError, pulumi_outputs, read_outputs_file
from infra.verify.secrets import key_checks, secret_checks

SECTIONS: tuple[Callable[[Target], list[Check]], ...] = (
    cluster_checks,
    node_group_checks,
    load_balancer_checks,
    cache_checks,
    secret_checks,
    key_checks,
    budget_checks,
    alarm_checks,
    topic_checks,
)
COLOURS = {"ok": "green", "drift": "red", "info": "cyan", "error": "yellow"}


class VerifyError(Exception):
    """Verification cannot start (exit 2); the message says why and what to do."""


def aws_session(stack: str, region: str) -> Clients:
    """The session the aws provider used: the stack's `aws:profile`, else the environment."""
    return boto3.Session(profile_name=stack_config_value(stack, "aws:profile"), region_name=region)


def connect(stack: str, settings: StackSettings, outputs: dict[str, Any]) -> Target:
    """The account the stack was deployed to, in the region the outputs name."""
    region = outputs.get("region") or settings.region
    try:
        session = aws_session(stack, region)
        account_id = session.client("sts").get_caller_identity()["Account"]
    except (ClientError, BotoCoreError) as exc:
        raise VerifyError(
            f"AWS credentials for {region} do not work ({exc}): aws configure, or aws sso login"
        ) from None
    return Target(stack, settings, outputs, session, account_id)


def run_verify(target: Target) -> list[Check]:
    region = target.outputs.get("region") or target.settings.region
    checks = [
        compare(
            f"stack {target.stack}",
            "region",
            target.settings.region,
            region,
            f"a stack cannot move regions: pulumi config set --stack {target.stack} aws:region "
            f"{region}",
        )
    ]
    for section in SECTIONS:
        checks.extend(section(target))
    return checks


def exit_status(checks: Sequence[Check]) -> int:
    """1 on any drift; else 2 when a check could not be read; else 0."""
    verdicts = {c.verdict for c in checks}
    if "drift" in verdicts:
        return 1
    return 2 if "error" in verdicts else 0


def render(stack: str, checks: Sequence[Check], console: Console) -> None:
    console.print(
        status_table(
            f"Verification of stack {stack}",
            ("resource", "check", "expected", "actual", "verdict", "fix"),
            ((c.resource, c.check, c.expected, c.actual, c.verdict, c.fix) for c in checks),
            status_column="verdict",
            colours=COLOURS,
        )
    )
    counts = {v: sum(c.verdict == v for c in checks) for v in VERDICTS}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    if counts["drift"]:
        console.print(f"[red]drift[/red] ({summary}): apply the fixes above")
    elif counts["error"]:
        console.print(f"[yellow]not verified[/yellow] ({summary}): see the errors above")
    else:
        console.print(f"[green]as configured[/green] ({summary})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.verify",
        description="Check a deployed stack's live resources against its settings.",
    )
    parser.add_argument("--stack", default="dev", help="stack name (Pulumi.<stack>.yaml)")
    parser.add_argument(
        "--outputs",
        type=Path,
        metavar="FILE",
        help="the stack outputs as JSON (pulumi stack output --json); default: ask the Pulumi CLI",
    )
    parser.add_argument("--json", action="store_true", help="print the checks as a JSON list")
    args = parser.parse_args(argv)
    try:
        settings = load_settings_for(args.stack, {})
        outputs = read_outputs_file(args.outputs) if args.outputs else pulumi_outputs(args.stack)
        checks = run_verify(connect(args.stack, settings, outputs))
    except (SettingsError, OutputsError, VerifyError) as exc:
        print(f"infra.verify: {exc}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(json.dumps([asdict(c) for c in checks], indent=2) + "\n")
    else:
        render(args.stack, checks, stdout_console())
    return exit_status(checks)

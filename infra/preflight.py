"""Before a real deployment: `python -m infra.preflight --stack <env> [--set K=V ...] [--json]`.

Checks what `pulumi up` needs on the deployer's machine and account, creating nothing:

- the stack config (`Pulumi.<stack>.yaml` plus `--set`) is valid;
- the `aws` CLI is on PATH (the exported kubeconfig runs `aws eks get-token`);
- a running container engine (`docker` or `podman`, `<engine> info` succeeds) when
  `liftoff:image` is unset, since `pulumi up` then builds app/;
- AWS credentials resolve and the caller identity answers (STS), in the stack's region;
- no value only the user can supply is still a placeholder (`infra.readiness`);
- the certificate: a `liftoff:certificateArn` exists in the stack's region and is ISSUED; a
  `liftoff:hostedZoneId` exists, is public and holds `liftoff:domainName`.

Exit status: 1 when any check is a blocker, 0 otherwise. Secure config values cannot be read
offline: a `secure:` `liftoff:llmApiKey` in the stack file counts as set, and so does one the
stack's Pulumi ESC environments supply when the `pulumi` CLI lists it (`infra.esc`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import boto3
import yaml
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from rich.console import Console

from infra import esc, readiness
from infra.console_table import status_table, stdout_console
from infra.plan import PlanInputError, add_set_argument, parse_overrides
from infra.settings import SettingsError, StackSettings, config_key, load_stack_file, stack_file

Status = Literal["ok", "blocker", "skipped"]
CONTAINER_ENGINES = ("docker", "podman")
ENGINE_INFO_TIMEOUT_S = 20
# Placeholder for a secure value present in the stack file: set, but unreadable without Pulumi.
SECURE_PLACEHOLDER = "secure-value-in-stack-file"


@dataclass(frozen=True)
class Check:
    check: str
    status: Status
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class PreflightReport:
    stack: str
    checks: list[Check]

    @property
    def blockers(self) -> list[Check]:
        return [c for c in self.checks if c.status == "blocker"]

    @property
    def ready(self) -> bool:
        return not self.blockers


def secure_keys(stack: str) -> set[str]:
    """Config keys `Pulumi.<stack>.yaml` holds as `secure:` ciphertext."""
    path = stack_file(stack)
    if not path.exists():
        return set()
    config = (yaml.safe_load(path.read_text()) or {}).get("config") or {}
    return {k for k, v in config.items() if isinstance(v, dict) and "secure" in v}


def stack_config_value(stack: str, key: str) -> Any:
    """A plain (not secure) value of the stack file, e.g. `aws:profile`."""
    path = stack_file(stack)
    if not path.exists():
        return None
    value = ((yaml.safe_load(path.read_text()) or {}).get("config") or {}).get(key)
    return None if isinstance(value, dict) else value


def load_settings_for(stack: str, overrides: Mapping[str, str]) -> StackSettings:
    """The stack's settings as `pulumi up` would see them, secure values (in the stack file or
    from its ESC environments) counted as set."""
    with_secure = dict(overrides)
    llm_key = config_key("llm_api_key")
    if llm_key in secure_keys(stack) | esc.supplied_config_keys(stack):
        with_secure.setdefault(llm_key, SECURE_PLACEHOLDER)
    provider_names = secure_provider_keys(stack)
    if provider_names:
        with_secure.setdefault(
            config_key("provider_api_keys"),
            json.dumps({name: SECURE_PLACEHOLDER for name in provider_names}),
        )
    return load_stack_file(stack, with_secure)


def secure_provider_keys(stack: str) -> list[str]:
    """Providers whose key the stack file holds as `secure:` ciphertext (`pulumi config set
    --secret --path 'liftoff:providerApiKeys.<name>'`)."""
    path = stack_file(stack)
    if not path.exists():
        return []
    config = (yaml.safe_load(path.read_text()) or {}).get("config") or {}
    keys = config.get(config_key("provider_api_keys"))
    if not isinstance(keys, dict):
        return []
    return sorted(name for name, v in keys.items() if isinstance(v, dict) and "secure" in v)


# --- machine -------------------------------------------------------------------------------


def check_aws_cli() -> Check:
    path = shutil.which("aws")
    if path:
        return Check("aws CLI", "ok", f"{path} (the kubeconfig runs `aws eks get-token`)")
    return Check(
        "aws CLI",
        "blocker",
        "`aws` is not on PATH: the exported kubeconfig runs `aws eks get-token`, and Helm "
        "releases reach the cluster through it",
        "install AWS CLI v2: https://docs.aws.amazon.com/cli/latest/userguide/"
        "getting-started-install.html",
    )


def _engine_runs(path: str) -> bool:
    try:
        done = subprocess.run(
            [path, "info"], capture_output=True, timeout=ENGINE_INFO_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def check_container_engine(settings: StackSettings, stack: str) -> Check:
    if settings.image:
        return Check(
            "container engine", "skipped", f"liftoff:image = {settings.image}: nothing to build"
        )
    found = [(name, path) for name in CONTAINER_ENGINES if (path := shutil.which(name))]
    for name, path in found:
        if _engine_runs(path):
            return Check("container engine", "ok", f"{name} runs ({path} info succeeded)")
    problem = (
        f"{', '.join(n for n, _ in found)} found but `info` fails (is the daemon running?)"
        if found
        else "neither docker nor podman is on PATH"
    )
    return Check(
        "container engine",
        "blocker",
        f"liftoff:image is unset, so `pulumi up` builds app/ into ECR, which needs a running "
        f"container engine; {problem}",
        "start Docker or Podman, or set liftoff:image to a built image: "
        f"{readiness.config_set(stack, 'image', '<registry>/<repository>:<tag>')}",
    )


# --- account -------------------------------------------------------------------------------


def aws_session(stack: str, settings: StackSettings) -> boto3.Session:
    """The session the aws provider would use: the stack's `aws:profile`, else the environment."""
    profile = stack_config_value(stack, "aws:profile")
    return boto3.Session(profile_name=profile, region_name=settings.region)


def check_identity(stack: str, settings: StackSettings) -> tuple[Check, boto3.Session | None]:
    """(the check, the session when its credentials work)."""
    try:
        session = aws_session(stack, settings)
        identity = session.client("sts").get_caller_identity()
    except NoCredentialsError:
        return (
            Check(
                "AWS credentials",
                "blocker",
                "no AWS credentials found (environment, shared credentials/config files, SSO, "
                "instance role)",
                "aws configure, or aws sso login --profile <p> and export AWS_PROFILE=<p>",
            ),
            None,
        )
    except (ClientError, BotoCoreError) as exc:
        return (
            Check(
                "AWS credentials",
                "blocker",
                f"the caller identity failed: {exc}",
                "refresh the credentials (aws sso login, or new access keys)",
            ),
            None,
        )
    detail = f"account {identity['Account']} as {identity['Arn']}"
    return Check("AWS credentials", "ok", detail), session


def _aws_error(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "error"))


def check_certificate_arn(session: boto3.Session, settings: StackSettings) -> Check:
    arn = settings.certificate_arn
    assert arn is not None
    try:
        certificate = session.client("acm").describe_certificate(CertificateArn=arn)
    except ClientError as exc:
        return Check(
            "certificate",
            "blocker",
            f"liftoff:certificateArn = {arn}: {_aws_error(exc)} in {settings.region} with these "
            "credentials",
            "request or import the certificate in the stack's region, or set the right ARN",
        )
    status = certificate["Certificate"]["Status"]
    if status != "ISSUED":
        return Check(
            "certificate",
            "blocker",
            f"liftoff:certificateArn = {arn}: status {status}; the HTTPS listener needs an "
            "ISSUED certificate",
            "complete its validation (DNS records) or request a new one",
        )
    return Check("certificate", "ok", f"{arn}: ISSUED in {settings.region}")


def check_hosted_zone(session: boto3.Session, settings: StackSettings) -> Check:
    domain, zone_id = settings.domain_name, settings.hosted_zone_id
    assert domain is not None and zone_id is not None
    try:
        zone = session.client("route53").get_hosted_zone(Id=zone_id)["HostedZone"]
    except ClientError as exc:
        return Check(
            "hosted zone",
            "blocker",
            f"liftoff:hostedZoneId = {zone_id}: {_aws_error(exc)} with these credentials",
            "aws route53 list-hosted-zones, and set the id of the zone that holds the domain",
        )
    zone_name = str(zone["Name"]).rstrip(".")
    if not (domain == zone_name or domain.endswith(f".{zone_name}")):
        return Check(
            "hosted zone",
            "blocker",
            f"liftoff:hostedZoneId = {zone_id} is {zone_name}, which does not hold "
            f"liftoff:domainName = {domain}",
            "set liftoff:hostedZoneId to the zone of the domain's parent",
        )
    if zone.get("Config", {}).get("PrivateZone"):
        return Check(
            "hosted zone",
            "blocker",
            f"liftoff:hostedZoneId = {zone_id} ({zone_name}) is private: ACM validates "
            "certificates through public DNS",
            "use the public hosted zone of the domain",
        )
    return Check("hosted zone", "ok", f"{zone_id} is {zone_name} (public): ACM validates {domain}")


def check_certificate_source(settings: StackSettings, session: boto3.Session | None) -> Check:
    if settings.certificate_arn is not None:
        if session is None:
            return Check("certificate", "skipped", "needs working AWS credentials")
        return check_certificate_arn(session, settings)
    if settings.domain_name is not None:
        if session is None:
            return Check("hosted zone", "skipped", "needs working AWS credentials")
        return check_hosted_zone(session, settings)
    # Prod without either is a readiness blocker; elsewhere HTTP is a choice.
    return Check("certificate", "skipped", "no liftoff:certificateArn or liftoff:domainName")


# --- the whole check -----------------------------------------------------------------------


def _readiness_checks(settings: StackSettings, stack: str) -> Iterator[Check]:
    found = readiness.blockers(settings, stack)
    for blocker in found:
        yield Check(f"value: {blocker.key}", "blocker", blocker.problem, blocker.command)
    if not found:
        yield Check("user-supplied values", "ok", "no placeholder or missing value")


def run_preflight(stack: str, overrides: Mapping[str, str] | None = None) -> PreflightReport:
    """Every check, in the order a deployer would fix them."""
    checks = [check_aws_cli()]
    try:
        settings = load_settings_for(stack, overrides or {})
    except SettingsError as exc:
        checks.append(Check("stack config", "blocker", str(exc), f"edit Pulumi.{stack}.yaml"))
        return PreflightReport(stack, checks)
    checks.append(Check("stack config", "ok", f"Pulumi.{stack}.yaml is valid ({settings.region})"))
    checks.append(check_container_engine(settings, stack))
    identity, session = check_identity(stack, settings)
    checks.append(identity)
    checks.extend(_readiness_checks(settings, stack))
    checks.append(check_certificate_source(settings, session))
    return PreflightReport(stack, checks)


def report_json(report: PreflightReport) -> dict[str, Any]:
    return {
        "stack": report.stack,
        "ready": report.ready,
        "blockers": len(report.blockers),
        "checks": [asdict(c) for c in report.checks],
    }


def render(report: PreflightReport, console: Console) -> None:
    console.print(
        status_table(
            f"Preflight of stack {report.stack}",
            ("check", "status", "detail", "fix"),
            ((c.check, c.status, c.detail, c.fix) for c in report.checks),
            status_column="status",
            colours={"ok": "green", "blocker": "red", "skipped": "dim"},
        )
    )
    if report.ready:
        console.print(
            "[green]ready:[/green] nothing blocks `pulumi up` on this machine and account"
        )
    else:
        count = len(report.blockers)
        console.print(f"[red]{count} blocker{'s' if count != 1 else ''}[/red]: fix them first")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.preflight",
        description="Check what a real `pulumi up` of a stack needs, creating nothing.",
    )
    parser.add_argument("--stack", default="dev", help="stack name (Pulumi.<stack>.yaml)")
    add_set_argument(parser, "override a config key, as in make plan (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.assignments)
    except PlanInputError as exc:
        print(f"infra.preflight: {exc}", file=sys.stderr)
        return 2
    report = run_preflight(args.stack, overrides)
    if args.json:
        sys.stdout.write(json.dumps(report_json(report), indent=2) + "\n")
    else:
        render(report, stdout_console())
    return 0 if report.ready else 1


if __name__ == "__main__":
    sys.exit(main())

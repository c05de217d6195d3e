"""One verified property of a live resource, and the fixes a drift line names."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from botocore.exceptions import ClientError

from infra.readiness import config_set
from infra.settings import StackSettings, config_key

# ok: as configured; drift: differs (exit 1); info: reported, not compared (the autoscaler's
# desired size); error: could not be read (permissions), so not verified (exit 2).
Verdict = Literal["ok", "drift", "info", "error"]
VERDICTS: tuple[Verdict, ...] = ("ok", "drift", "info", "error")

# The error codes AWS answers for a resource that does not exist, per service.
NOT_FOUND_CODES = frozenset(
    {
        "ResourceNotFoundException",  # eks, secretsmanager
        "NotFoundException",  # kms, budgets
        "NotFound",  # sns
        "LoadBalancerNotFound",
        "TargetGroupNotFound",
        "ListenerNotFound",
        "WAFNonexistentItemException",
        "ReplicationGroupNotFoundFault",
        "CacheClusterNotFound",
        "InvalidLaunchTemplateId.NotFound",
        "InvalidLaunchTemplateId.VersionNotFound",
    }
)


@dataclass(frozen=True)
class Check:
    resource: str
    check: str
    expected: str
    actual: str
    verdict: Verdict
    fix: str = ""


class MissingOutput(LookupError):
    """A stack output verify needs is absent: the stack was deployed by an older program."""


class Clients(Protocol):
    """Where boto3 clients come from: a `boto3.Session` (tests give recorded clients)."""

    def client(self, service_name: str) -> Any: ...


@dataclass(frozen=True)
class Target:
    """What one verification looks at: the stack, its settings, its outputs, the account."""

    stack: str
    settings: StackSettings
    outputs: dict[str, Any]
    session: Clients
    account_id: str

    def output(self, name: str) -> Any:
        value = self.outputs.get(name)
        if value is None:
            raise MissingOutput(name)
        return value

    def client(self, service: str) -> Any:
        return self.session.client(service)

    @property
    def pulumi_up(self) -> str:
        return f"pulumi up --stack {self.stack}"

    def apply_or_keep(self, field: str, live: object) -> str:
        """Apply the configured value, or make the config say what runs."""
        key = config_key(field)
        return (
            f"{self.pulumi_up} (applies {key}); to keep the live value instead: "
            f"{config_set(self.stack, field, shown_arg(live))}"
        )


def shown(value: object) -> str:
    """A value as the table prints it: lists comma-separated, booleans lowercase."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ", ".join(shown(v) for v in value) or "none"
    return str(value)


def shown_arg(value: object) -> str:
    """A value as `pulumi config set` takes it (structured values as quoted JSON)."""
    if isinstance(value, (list, tuple, dict)):
        return f"'{json.dumps(value)}'"
    return shown(value)


def compare(
    resource: str, check: str, expected: object, actual: object, fix: str | Callable[[], str]
) -> Check:
    """ok when `actual == expected`, else drift with `fix` (a callable when it needs the live
    value)."""
    if expected == actual:
        return Check(resource, check, shown(expected), shown(actual), "ok")
    return Check(
        resource, check, shown(expected), shown(actual), "drift", fix() if callable(fix) else fix
    )


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "error"))


def api_failure(
    target: Target, resource: str, check: str, expected: str, exc: ClientError
) -> Check:
    """A lookup that failed: drift when the resource is gone, error when it cannot be read."""
    code = error_code(exc)
    if code in NOT_FOUND_CODES:
        return Check(resource, check, expected, f"not found ({code})", "drift", target.pulumi_up)
    operation = exc.operation_name
    return Check(
        resource,
        check,
        expected,
        f"{operation} failed: {code}",
        "error",
        f"allow {operation} to the caller (or fix the credentials), then run verify again",
    )


def missing_output(target: Target, resource: str, name: str) -> Check:
    return Check(
        resource,
        f"stack output {name}",
        "exported",
        "missing",
        "drift",
        f"{target.pulumi_up} (the deployed program predates the output)",
    )


def same_key(expected_arn: str, actual: str | None) -> bool:
    """KMS references AWS reports as an ARN or a bare key id name the same key."""
    if not actual:
        return False
    return expected_arn.rsplit("/", 1)[-1] == actual.rsplit("/", 1)[-1]


def compare_key(
    resource: str, check: str, expected_arn: str, actual: str | None, fix: str
) -> Check:
    verdict: Verdict = "ok" if same_key(expected_arn, actual) else "drift"
    return Check(
        resource, check, expected_arn, shown(actual), verdict, fix if verdict == "drift" else ""
    )


def pages(client: Any, operation: str, key: str, **params: Any) -> Iterator[Any]:
    """Every item under `key` across the pages of a paginated list call."""
    for page in client.get_paginator(operation).paginate(**params):
        yield from page.get(key, [])

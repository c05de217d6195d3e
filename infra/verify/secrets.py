"""The gateway's secrets and the stack's KMS keys."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from infra.provider_settings import keyed_providers
from infra.readiness import config_set
from infra.settings import config_key
from infra.verify.checks import (
    Check,
    MissingOutput,
    Target,
    api_failure,
    compare,
    compare_key,
    missing_output,
)

# Stack output naming each key -> what it protects.
KEY_OUTPUTS = {
    "dataKeyArn": "secrets and cache data",
    "clusterSecretsKeyArn": "Kubernetes secrets",
    "alertsKeyArn": "alert topic",
}


def _no_version_fix(target: Target, slug: str) -> str:
    if slug == "upstreamApiKey":
        return (
            f"{config_set(target.stack, 'llm_api_key', '<key>', secret=True)}, bump "
            f"{config_key('secrets_version')}, then {target.pulumi_up}"
        )
    return target.pulumi_up


def _provider_key_fix(target: Target, provider: str) -> str:
    command = config_set(
        target.stack, "provider_api_keys", "<key>", secret=True, path=f".{provider}"
    )
    return f"{command}, bump {config_key('secrets_version')}, then {target.pulumi_up}"


def _one_secret(manager: Any, target: Target, arn: str, key_arn: str, fix: str) -> list[Check]:
    """The secret exists (not scheduled for deletion), uses the stack's key, has a value."""
    resource = f"secret {arn.split(':')[-1]}"
    try:
        secret = manager.describe_secret(SecretId=arn)
    except ClientError as exc:
        return [api_failure(target, resource, "exists", "present", exc)]
    deleted = secret.get("DeletedDate")
    current = any("AWSCURRENT" in s for s in secret.get("VersionIdsToStages", {}).values())
    return [
        compare(
            resource,
            "exists",
            "present",
            f"scheduled for deletion on {deleted:%Y-%m-%d}" if deleted else "present",
            f"aws secretsmanager restore-secret --secret-id {arn}",
        ),
        compare_key(resource, "KMS key", key_arn, secret.get("KmsKeyId"), target.pulumi_up),
        compare(resource, "current version", True, current, fix),
    ]


def secret_checks(target: Target) -> list[Check]:
    try:
        arns: dict[str, str] = dict(target.output("secretArns"))
        key_arn = target.output("dataKeyArn")
    except MissingOutput as missing:
        return [missing_output(target, "secrets", str(missing))]
    manager = target.client("secretsmanager")
    checks: list[Check] = []
    for slug, arn in sorted(arns.items()):
        checks.extend(_one_secret(manager, target, arn, key_arn, _no_version_fix(target, slug)))
    return checks + provider_secret_checks(target, manager, key_arn)


def provider_secret_checks(target: Target, manager: Any, key_arn: str) -> list[Check]:
    """The key secret of each provider after the first that takes one (liftoff:providers)."""
    wanted = [p.name for p in keyed_providers(target.settings.providers)]
    if not wanted:
        return []
    try:
        arns: dict[str, str] = dict(target.output("providerSecretArns"))
    except MissingOutput as missing:
        return [missing_output(target, "provider secrets", str(missing))]
    checks: list[Check] = []
    for provider in wanted:
        fix = _provider_key_fix(target, provider)
        if provider not in arns:
            checks.append(
                compare(
                    f"secret of provider {provider}",
                    "in stack outputs",
                    "present",
                    "absent",
                    target.pulumi_up,
                )
            )
            continue
        checks.extend(_one_secret(manager, target, arns[provider], key_arn, fix))
    return checks


def key_checks(target: Target) -> list[Check]:
    kms = target.client("kms")
    checks: list[Check] = []
    for output, purpose in KEY_OUTPUTS.items():
        try:
            arn = target.output(output)
        except MissingOutput:
            checks.append(missing_output(target, f"KMS key ({purpose})", output))
            continue
        resource = f"KMS key {arn.rsplit('/', 1)[-1]} ({purpose})"
        try:
            state = kms.describe_key(KeyId=arn)["KeyMetadata"].get("KeyState")
            # KMS refuses the rotation status of a key pending deletion: its state says enough.
            rotates = (
                kms.get_key_rotation_status(KeyId=arn).get("KeyRotationEnabled")
                if state == "Enabled"
                else None
            )
        except ClientError as exc:
            checks.append(api_failure(target, resource, "state", "Enabled", exc))
            continue
        checks.append(
            compare(
                resource,
                "state",
                "Enabled",
                state,
                f"aws kms cancel-key-deletion --key-id {arn} && aws kms enable-key --key-id {arn}"
                if state == "PendingDeletion"
                else f"aws kms enable-key --key-id {arn}",
            )
        )
        if rotates is None:
            continue
        checks.append(
            compare(
                resource,
                "automatic rotation",
                True,
                rotates is True,
                f"{target.pulumi_up} (or aws kms enable-key-rotation --key-id {arn})",
            )
        )
    return checks

"""Rules on Secrets Manager secrets and KMS keys."""

from __future__ import annotations

from collections.abc import Iterator

from infra.rules.base import ResourceRecord, RuleContext, is_true, label, resource_rule
from infra.rules.resource_types import KMS_KEY, SECRET


@resource_rule(
    "CKV_AWS_149",
    "Secrets Manager secrets are encrypted with the customer-managed KMS key",
    "error",
    [SECRET],
    "set kmsKeyId to the stack's customer-managed key.",
)
def secret_on_cmk(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    if not resource.inputs.get("kmsKeyId"):
        yield f"{label(resource)} uses the default aws/secretsmanager key, not the stack's CMK."


@resource_rule(
    "CKV_AWS_7",
    "Customer-managed KMS keys rotate automatically",
    "error",
    [KMS_KEY],
    "set enableKeyRotation: true.",
)
def kms_rotation(resource: ResourceRecord, context: RuleContext) -> Iterator[str]:
    spec = resource.inputs.get("customerMasterKeySpec") or "SYMMETRIC_DEFAULT"
    if spec == "SYMMETRIC_DEFAULT" and not is_true(resource.inputs.get("enableKeyRotation")):
        yield f"{label(resource)} does not rotate its key material."

"""Rules on S3 buckets: public access blocks."""

from __future__ import annotations

from collections.abc import Iterator

from infra.rules.base import (
    ResourceRecord,
    RuleContext,
    StackFinding,
    StackView,
    is_true,
    label,
    stack_rule,
)
from infra.rules.resource_types import (
    ACCOUNT_PUBLIC_ACCESS_BLOCK,
    BUCKET_PUBLIC_ACCESS_BLOCK,
    BUCKETS,
)

PUBLIC_ACCESS_FLAGS = (
    "blockPublicAcls",
    "blockPublicPolicy",
    "ignorePublicAcls",
    "restrictPublicBuckets",
)


def _flags_off(block: ResourceRecord) -> list[str]:
    return [flag for flag in PUBLIC_ACCESS_FLAGS if not is_true(block.inputs.get(flag))]


def _blocks_bucket(view: StackView, block: ResourceRecord, bucket: ResourceRecord) -> bool:
    """Whether a public access block's `bucket` refers to `bucket` (by dependency, id or name)."""
    if any(r.urn == bucket.urn for r in view.referenced(block, "bucket") or []):
        return True
    name = bucket.inputs.get("bucket")
    return bool(name) and block.inputs.get("bucket") == name


@stack_rule(
    "CKV2_AWS_6",
    "Every S3 bucket has a public access block with all four settings on",
    "error",
    "add an aws.s3.BucketPublicAccessBlock for the bucket with blockPublicAcls, "
    "blockPublicPolicy, ignorePublicAcls and restrictPublicBuckets true.",
    also=["CKV_AWS_53", "CKV_AWS_54", "CKV_AWS_55", "CKV_AWS_56"],
)
def s3_public_access_blocked(view: StackView, context: RuleContext) -> Iterator[StackFinding]:
    # The account-wide block, all on, covers every bucket of the account.
    if any(not _flags_off(b) for b in view.of_type(ACCOUNT_PUBLIC_ACCESS_BLOCK)):
        return
    blocks = view.of_type(BUCKET_PUBLIC_ACCESS_BLOCK)
    for bucket in view.of_type(*BUCKETS):
        own = [b for b in blocks if _blocks_bucket(view, b, bucket)]
        if not own:
            yield bucket, f"{label(bucket)} has no public access block."
        elif all(_flags_off(b) for b in own):
            off = ", ".join(_flags_off(own[0]))
            yield bucket, f"{label(bucket)} has a public access block with {off} off."

"""`pulumi destroy` in dev and staging deletes everything in one pass; prod keeps its deletion
protections until the steps docs/faq.md gives (config, `pulumi up`, destroy) lift them."""

from __future__ import annotations

import re

import pytest

from infra.mocking import ProgramRun, run_program
from infra.settings import KEY_TO_FIELD, REPO_ROOT

FAQ = REPO_ROOT / "docs" / "faq.md"
README = REPO_ROOT / "README.md"


def _one_pass_problems(run: ProgramRun) -> list[str]:
    """Everything that would stop or outlive a single `pulumi destroy`."""
    found = [
        f"{r.type} {r.name}: {option}"
        for r in run.resources
        for option in ("protect", "retain_on_delete")
        if r.options[option]
    ]
    for alb in run.of_type("aws:lb/loadBalancer:LoadBalancer"):
        if alb.inputs.get("enableDeletionProtection"):
            found.append(f"{alb.name}: ALB deletion protection")
    for cluster in run.of_type("aws:eks/cluster:Cluster"):
        if cluster.inputs.get("deletionProtection"):
            found.append(f"{cluster.name}: EKS deletion protection")
    for bucket in run.of_type("aws:s3/bucket:Bucket"):
        if not bucket.inputs.get("forceDestroy"):
            found.append(f"{bucket.name}: a bucket with objects is not deleted")
    for repo in run.of_type("aws:ecr/repository:Repository"):
        if not repo.inputs.get("forceDelete"):
            found.append(f"{repo.name}: a repository with images is not deleted")
    for group in run.of_type("aws:elasticache/replicationGroup:ReplicationGroup"):
        if group.inputs.get("finalSnapshotIdentifier"):
            found.append(f"{group.name}: final snapshot (its name stays taken)")
    for secret in run.of_type("aws:secretsmanager/secret:Secret"):
        if secret.inputs.get("recoveryWindowInDays") != 0:
            found.append(f"{secret.name}: recovery window keeps the name taken")
    for key in run.of_type("aws:kms/key:Key"):
        # Pending deletion blocks nothing (a new key gets a new id); AWS allows 7-30 days.
        assert 7 <= key.inputs["deletionWindowInDays"] <= 30, key.name
    return found


@pytest.mark.parametrize("stack", ["dev", "staging"])
def test_dev_and_staging_tear_down_in_one_pass(stack: str) -> None:
    # Access logs on, so that the bucket is part of what must go.
    run = run_program(stack, {"liftoff:albAccessLogs": "true"})
    assert run.of_type("aws:s3/bucket:Bucket") and run.of_type("aws:ecr/repository:Repository")
    assert _one_pass_problems(run) == []


def test_the_stack_files_as_committed_tear_down_in_one_pass(
    dev_run: ProgramRun, staging_run: ProgramRun
) -> None:
    assert _one_pass_problems(dev_run) == _one_pass_problems(staging_run) == []


def test_prod_keeps_its_deletion_protections(prod_run: ProgramRun) -> None:
    problems = _one_pass_problems(prod_run)
    assert any("ALB deletion protection" in p for p in problems)
    assert any("bucket with objects" in p for p in problems)
    assert any("repository with images" in p for p in problems)
    assert any("recovery window" in p for p in problems)
    assert not any(": protect" in p or "retain_on_delete" in p for p in problems)


def _faq_prod_teardown() -> str:
    text = FAQ.read_text()
    section = text.split("### `pulumi destroy` — does it finish in one pass?", 1)[1]
    return section.split("\n### ", 1)[0]


def test_the_faq_steps_make_prod_destroy_in_one_pass_but_for_secret_windows() -> None:
    section = _faq_prod_teardown()
    commands = re.findall(r"^(pulumi [^#\n]*?)\s*(?:#.*)?$", section, flags=re.MULTILINE)
    assert commands == [
        "pulumi stack select prod",
        "pulumi config set liftoff:albDeletionProtection false",
        "pulumi up",
        "pulumi destroy",
    ]
    overrides = {}
    for command in commands:
        if command.startswith("pulumi config set "):
            key, value = command.removeprefix("pulumi config set ").split()
            assert key in KEY_TO_FIELD, key
            overrides[key] = value
    run = run_program("prod", overrides)
    # What remains is the 30-day secret window, which the FAQ explains how to lift.
    remaining = _one_pass_problems(run)
    assert remaining and all("recovery window" in p for p in remaining)
    assert "--force-delete-without-recovery" in section


def test_the_readme_promises_one_pass_only_in_dev_and_staging() -> None:
    text = " ".join(README.read_text().split())
    assert "secret ARNs. `pulumi destroy` tears everything down" not in text  # the old promise
    assert "In dev and staging, `pulumi destroy` tears everything down in one pass" in text
    assert "Prod keeps its deletion protections" in text

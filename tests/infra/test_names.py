"""Names AWS holds per account include the stack name (two stacks never collide, the dev/staging/
prod stacks keep their names), secrets can be recreated right after a destroy outside prod, and
the gateway image tag covers the target platform."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from infra.image import context_tag
from infra.mocking import ProgramRun, run_program
from infra.settings import ENVIRONMENTS, SettingsError, load_settings

# Inputs that hold a name AWS keeps unique per account (IAM, Budgets, S3) or per region.
NAME_INPUTS = {
    "aws:iam/role:Role": "name",
    "aws:budgets/budget:Budget": "name",
    "aws:secretsmanager/secret:Secret": "name",
    "aws:s3/bucket:Bucket": "bucketPrefix",
    "aws:lb/loadBalancer:LoadBalancer": "name",
    "aws:lb/targetGroup:TargetGroup": "name",
    "aws:elasticache/replicationGroup:ReplicationGroup": "replicationGroupId",
    "aws:elasticache/subnetGroup:SubnetGroup": "name",
    "aws:elasticache/parameterGroup:ParameterGroup": "name",
    "aws:eks/cluster:Cluster": "name",
    "aws:sns/topic:Topic": "name",
    "aws:cloudwatch/logGroup:LogGroup": "name",
    "aws:cloudwatch/metricAlarm:MetricAlarm": "name",
    "aws:ecr/repository:Repository": "name",
    "aws:kms/alias:Alias": "name",
    "aws:wafv2/webAcl:WebAcl": "name",
}


def _names(run: ProgramRun) -> set[tuple[str, str]]:
    return {
        (r.type, r.inputs[NAME_INPUTS[r.type]])
        for r in run.resources
        if r.type in NAME_INPUTS and NAME_INPUTS[r.type] in r.inputs
    }


@pytest.fixture(scope="module")
def acme_prod_run() -> ProgramRun:
    """A second prod-environment stack in the same account, configured like prod."""
    return run_program("acme-prod", {"liftoff:environment": "prod"}, config_from="prod")


def test_stacks_named_after_their_environment_keep_their_names(
    stack_runs: dict[str, ProgramRun],
) -> None:
    for stack in ENVIRONMENTS:
        run = stack_runs[stack]
        names = dict(_names(run))
        assert run.settings is not None and run.settings.prefix == f"liftoff-{stack}"
        assert names["aws:budgets/budget:Budget"] == f"liftoff-{stack}-monthly"
        assert names["aws:eks/cluster:Cluster"] == f"liftoff-{stack}-eks"
        assert {r.inputs["name"] for r in run.of_type("aws:secretsmanager/secret:Secret")} == {
            f"liftoff-{stack}/{slug}"
            for slug in ("upstream-api-key", "redis-auth-token", "client-keys")
        }
        assert f"liftoff-{stack}-eks-cluster" in {
            r.inputs["name"] for r in run.of_type("aws:iam/role:Role")
        }


def test_two_stacks_of_one_environment_share_no_name(
    prod_run: ProgramRun, acme_prod_run: ProgramRun
) -> None:
    assert acme_prod_run.settings is not None and acme_prod_run.settings.environment == "prod"
    ours, theirs = _names(prod_run), _names(acme_prod_run)
    assert {t for t, _ in ours} == {t for t, _ in theirs} == set(NAME_INPUTS)
    assert not {n for _, n in ours} & {n for _, n in theirs}
    assert ("aws:budgets/budget:Budget", "liftoff-acme-prod-monthly") in theirs
    assert ("aws:s3/bucket:Bucket", "liftoff-acme-prod-alb-logs-") in theirs
    # The stack tag tells the two apart as well.
    assert {
        r.inputs["tags"]["liftoff:stack"] for r in acme_prod_run.of_type("aws:ec2/vpc:Vpc")
    } == {"liftoff-acme-prod"}


def test_another_dev_stack_no_longer_takes_the_dev_stacks_names() -> None:
    """A feature stack defaults to the dev environment; its names used to be liftoff-dev-*."""
    settings = load_settings({}, "feature-x")
    assert settings.environment == "dev" and settings.prefix == "liftoff-feature-x"


@pytest.mark.parametrize("stack", ["Prod", "acme_prod", "acme.prod", "acme--prod", "-acme"])
def test_stack_names_aws_names_cannot_hold_are_refused(stack: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({}, stack)
    assert caught.value.problems == [
        f"stack = {stack}: a stack name of lowercase letters and digits separated by single '-' "
        "(it is part of S3, ElastiCache and load balancer names, which allow nothing else)"
    ]


# --- secrets after a destroy ----------------------------------------------------------------


def _destroy_then_recreate(name: str, recovery_window_days: int) -> None:
    """What the AWS provider does on destroy (0 = ForceDeleteWithoutRecovery), then up again."""
    client = boto3.client("secretsmanager", region_name="us-east-1")
    client.create_secret(Name=name, SecretString="v1")
    if recovery_window_days:
        client.delete_secret(SecretId=name, RecoveryWindowInDays=recovery_window_days)
    else:
        client.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
    client.create_secret(Name=name, SecretString="v2")


@pytest.mark.parametrize("stack", ["dev", "staging"])
def test_dev_and_staging_secrets_can_be_recreated_right_after_a_destroy(
    stack: str, stack_runs: dict[str, ProgramRun]
) -> None:
    secrets = stack_runs[stack].of_type("aws:secretsmanager/secret:Secret")
    assert {s.inputs["recoveryWindowInDays"] for s in secrets} == {0}
    with mock_aws():
        for secret in secrets:
            _destroy_then_recreate(secret.inputs["name"], secret.inputs["recoveryWindowInDays"])


def test_prod_secrets_stay_recoverable_and_hold_their_names(prod_run: ProgramRun) -> None:
    """The protection docs/faq.md explains how to lift before bringing prod back inside it."""
    secrets = prod_run.of_type("aws:secretsmanager/secret:Secret")
    assert {s.inputs["recoveryWindowInDays"] for s in secrets} == {30}
    with mock_aws(), pytest.raises(ClientError):
        _destroy_then_recreate(secrets[0].inputs["name"], 30)


# --- image tag and platform -----------------------------------------------------------------


def _pushed(run: ProgramRun) -> tuple[str, list[str]]:
    build = run.one("docker-build:index:Image")
    (tag,) = build.inputs["tags"]
    return tag.rsplit(":", 1)[1], build.inputs["platforms"]


def test_switching_nodes_to_graviton_pushes_a_new_tag(dev_run: ProgramRun) -> None:
    x86_tag, x86_platforms = _pushed(dev_run)
    arm_tag, arm_platforms = _pushed(
        run_program("dev", {"liftoff:nodeInstanceTypes": '["m7g.large"]'})
    )
    assert x86_platforms == ["linux/amd64"] and arm_platforms == ["linux/arm64"]
    assert x86_tag.endswith("-amd64") and arm_tag.endswith("-arm64")
    # Same app/ content (the source hash), another platform: a tag the repository never saw.
    source = x86_tag.removesuffix("-amd64")
    assert source == arm_tag.removesuffix("-arm64") and source.startswith("src-")
    assert context_tag("app").startswith("src-") and len(source) == len(context_tag("app"))

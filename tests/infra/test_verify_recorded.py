"""The verify checks moto cannot emulate (EKS access entries, unhealthy targets, a cluster or
node group that is not ACTIVE, a caller without permissions), on recorded boto3-shaped answers
(botocore Stubber): each client answers exactly the calls listed, with the parameters listed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from infra.access import ADMIN_POLICY_ARN, VIEW_POLICY_ARN
from infra.settings import StackSettings, load_stack_file
from infra.verify.checks import Check, Target
from infra.verify.cli import exit_status
from infra.verify.cluster import access_entry_checks, node_group_checks
from infra.verify.loadbalancer import target_group_checks

ACCOUNT = "123456789012"
ADMIN = f"arn:aws:iam::{ACCOUNT}:role/platform-admin"
VIEWER = f"arn:aws:iam::{ACCOUNT}:role/readonly/auditor"
DEPLOYER = f"arn:aws:iam::{ACCOUNT}:role/deployer"
CLUSTER = "liftoff-prod-eks"
TARGET_GROUP = (
    f"arn:aws:elasticloadbalancing:us-west-2:{ACCOUNT}:targetgroup/liftoff-prod-gateway/"
    "0123456789abcdef"
)


class Recorded:
    """One stubbed client per service; `client()` hands it out, `done()` asserts every recorded
    answer was asked for."""

    def __init__(self) -> None:
        self.clients: dict[str, Any] = {}
        self.stubbers: dict[str, Stubber] = {}

    def stub(self, service: str) -> Stubber:
        if service not in self.stubbers:
            client = boto3.client(
                service,
                region_name="us-west-2",
                aws_access_key_id="recorded",
                aws_secret_access_key="recorded",
            )
            self.clients[service] = client
            self.stubbers[service] = Stubber(client)
            self.stubbers[service].activate()
        return self.stubbers[service]

    def client(self, service_name: str) -> Any:
        return self.clients[service_name]

    def done(self) -> None:
        for stubber in self.stubbers.values():
            stubber.assert_no_pending_responses()


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    answers = Recorded()
    yield answers
    answers.done()


def settings() -> StackSettings:
    return load_stack_file(
        "prod",
        {"liftoff:clusterAdmins": f'["{ADMIN}"]', "liftoff:clusterViewers": f'["{VIEWER}"]'},
    )


def target(recorded: Recorded, **outputs: Any) -> Target:
    base = {"clusterName": CLUSTER, "deployerArn": DEPLOYER, **outputs}
    return Target("prod", settings(), base, recorded, ACCOUNT)


def associated(recorded: Recorded, principal: str, *policies: str) -> None:
    recorded.stub("eks").add_response(
        "list_associated_access_policies",
        {
            "clusterName": CLUSTER,
            "principalArn": principal,
            "associatedAccessPolicies": [
                {"policyArn": p, "accessScope": {"type": "cluster"}} for p in policies
            ],
        },
        {"clusterName": CLUSTER, "principalArn": principal},
    )


def listed(recorded: Recorded, *principals: str) -> None:
    recorded.stub("eks").add_response(
        "list_access_entries", {"accessEntries": list(principals)}, {"clusterName": CLUSTER}
    )


def described(recorded: Recorded, principal: str, kind: str) -> None:
    recorded.stub("eks").add_response(
        "describe_access_entry",
        {"accessEntry": {"clusterName": CLUSTER, "principalArn": principal, "type": kind}},
        {"clusterName": CLUSTER, "principalArn": principal},
    )


def verdicts(checks: list[Check]) -> list[tuple[str, str]]:
    return [(c.resource, c.verdict) for c in checks]


NODE_ROLE = f"arn:aws:iam::{ACCOUNT}:role/liftoff-prod-eks-nodes"


def test_access_entries_as_configured(recorded: Recorded) -> None:
    # Admins first (the deployer among them), then viewers, as infra/access.py grants them.
    associated(recorded, ADMIN, ADMIN_POLICY_ARN)
    associated(recorded, DEPLOYER, ADMIN_POLICY_ARN)
    associated(recorded, VIEWER, VIEW_POLICY_ARN)
    listed(recorded, ADMIN, DEPLOYER, VIEWER, NODE_ROLE)
    described(recorded, NODE_ROLE, "EC2_LINUX")  # EKS's own entry: not the team's
    checks = access_entry_checks(target(recorded), CLUSTER)
    assert verdicts(checks) == [
        (f"access entry {ADMIN}", "ok"),
        (f"access entry {DEPLOYER}", "ok"),
        (f"access entry {VIEWER}", "ok"),
    ]
    assert checks[2].expected == "AmazonEKSViewPolicy (cluster)"
    assert exit_status(checks) == 0


def test_a_missing_entry_a_wrong_policy_and_an_unconfigured_entry_are_drift(
    recorded: Recorded,
) -> None:
    recorded.stub("eks").add_client_error(
        "list_associated_access_policies",
        service_error_code="ResourceNotFoundException",
        http_status_code=404,
        expected_params={"clusterName": CLUSTER, "principalArn": ADMIN},
    )
    associated(recorded, DEPLOYER, ADMIN_POLICY_ARN)
    associated(recorded, VIEWER, ADMIN_POLICY_ARN)  # a viewer made admin by hand
    stranger = f"arn:aws:iam::{ACCOUNT}:user/contractor"
    listed(recorded, DEPLOYER, VIEWER, stranger)
    described(recorded, stranger, "STANDARD")
    checks = access_entry_checks(target(recorded), CLUSTER)
    assert verdicts(checks) == [
        (f"access entry {ADMIN}", "drift"),
        (f"access entry {DEPLOYER}", "ok"),
        (f"access entry {VIEWER}", "drift"),
        (f"access entry {stranger}", "drift"),
    ]
    missing, _, wrong, extra = checks
    assert missing.actual.startswith("not found") and missing.fix == "pulumi up --stack prod"
    assert (wrong.expected, wrong.actual) == (
        "AmazonEKSViewPolicy (cluster)",
        "AmazonEKSClusterAdminPolicy (cluster)",
    )
    assert "liftoff:clusterViewers" in wrong.fix
    assert (
        f"aws eks delete-access-entry --cluster-name {CLUSTER} --principal-arn {stranger}"
        in extra.fix
    )
    assert exit_status(checks) == 1


def test_a_caller_without_permission_is_an_error_not_drift(recorded: Recorded) -> None:
    for principal in (ADMIN, DEPLOYER, VIEWER):
        recorded.stub("eks").add_client_error(
            "list_associated_access_policies",
            service_error_code="AccessDeniedException",
            http_status_code=403,
            expected_params={"clusterName": CLUSTER, "principalArn": principal},
        )
    recorded.stub("eks").add_client_error(
        "list_access_entries", service_error_code="AccessDeniedException", http_status_code=403
    )
    checks = access_entry_checks(target(recorded), CLUSTER)
    assert {c.verdict for c in checks} == {"error"}
    assert "ListAssociatedAccessPolicies" in checks[0].fix
    assert exit_status(checks) == 2


def target_group(recorded: Recorded, states: list[str]) -> None:
    elb = recorded.stub("elbv2")
    elb.add_response(
        "describe_target_groups",
        {
            "TargetGroups": [
                {
                    "TargetGroupArn": TARGET_GROUP,
                    "TargetGroupName": "liftoff-prod-gateway",
                    "Protocol": "HTTP",
                    "Port": 8080,
                    "TargetType": "ip",
                    "HealthCheckPath": "/readyz",
                }
            ]
        },
        {"TargetGroupArns": [TARGET_GROUP]},
    )
    elb.add_response(
        "describe_target_health",
        {
            "TargetHealthDescriptions": [
                {
                    "Target": {"Id": f"10.30.0.{10 + i}", "Port": 8080},
                    "TargetHealth": {"State": state},
                }
                for i, state in enumerate(states)
            ]
        },
        {"TargetGroupArn": TARGET_GROUP},
    )


def test_fewer_healthy_targets_than_app_min_replicas_is_drift(recorded: Recorded) -> None:
    # prod: liftoff:appMinReplicas = 3
    target_group(recorded, ["healthy", "unhealthy", "draining", "healthy"])
    health = target_group_checks(target(recorded), TARGET_GROUP)[-1]
    assert (health.check, health.expected, health.actual, health.verdict) == (
        "healthy targets",
        ">= 3 (liftoff:appMinReplicas)",
        "2 healthy (others: draining, unhealthy)",
        "drift",
    )
    assert "kubectl -n liftoff get pods,targetgroupbindings" in health.fix


def test_enough_healthy_targets_while_others_start_is_ok(recorded: Recorded) -> None:
    target_group(recorded, ["healthy", "healthy", "initial", "healthy"])
    health = target_group_checks(target(recorded), TARGET_GROUP)[-1]
    assert (health.actual, health.verdict) == ("3 healthy (others: initial)", "ok")


def test_a_degraded_node_group_names_the_health_issue(recorded: Recorded) -> None:
    s = settings()
    name = "liftoff-prod-nodes-20261201101500123400000001"
    recorded.stub("eks").add_response(
        "describe_nodegroup",
        {
            "nodegroup": {
                "nodegroupName": name,
                "clusterName": CLUSTER,
                "status": "DEGRADED",
                "capacityType": "ON_DEMAND",
                "instanceTypes": list(s.node_instance_types),
                "scalingConfig": {
                    "minSize": s.node_min_size,
                    "maxSize": s.node_max_size,
                    "desiredSize": 5,
                },
                "launchTemplate": {"id": "lt-0123456789abcdef0", "version": "3"},
                "health": {
                    "issues": [
                        {
                            "code": "AsgInstanceLaunchFailures",
                            "message": "InsufficientInstanceCapacity",
                        }
                    ]
                },
            }
        },
        {"clusterName": CLUSTER, "nodegroupName": name},
    )
    recorded.stub("ec2").add_response(
        "describe_launch_template_versions",
        {
            "LaunchTemplateVersions": [
                {
                    "LaunchTemplateId": "lt-0123456789abcdef0",
                    "VersionNumber": 3,
                    "LaunchTemplateData": {
                        "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1}
                    },
                }
            ]
        },
        {"LaunchTemplateId": "lt-0123456789abcdef0", "Versions": ["3"]},
    )
    checks = node_group_checks(target(recorded, nodeGroupNames=[name]))
    status = next(c for c in checks if c.check == "status")
    assert (status.expected, status.actual, status.verdict) == ("ACTIVE", "DEGRADED", "drift")
    assert status.fix.startswith("AsgInstanceLaunchFailures: InsufficientInstanceCapacity")
    assert [c.check for c in checks if c.verdict == "drift"] == ["status"]

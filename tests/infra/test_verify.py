"""infra.verify's checks: a stack deployed with boto3 in moto to match its settings verifies
clean; each drift, made with boto3 afterwards (or at creation where moto cannot change a
property), is reported with its fix and exit status 1."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from infra.names import system_node_group, workload_node_group
from infra.settings import StackSettings, load_stack_file
from infra.verify.checks import Check
from infra.verify.cli import exit_status, run_verify
from tests.infra.verify_world import World, deploy, moto_account, shape_for

CERTIFICATE = "arn:aws:acm:us-west-2:123456789012:certificate/0f3d0e2c-1a2b-4c3d-8e9f-0123456789ab"


@pytest.fixture
def aws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with moto_account(tmp_path, monkeypatch):
        yield


def prod(**overrides: str) -> StackSettings:
    return load_stack_file("prod", overrides)


def drifts(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.verdict == "drift"]


def only_drift(world: World) -> Check:
    checks = run_verify(world.target())
    found = drifts(checks)
    assert len(found) == 1, [(c.resource, c.check, c.actual) for c in found]
    assert exit_status(checks) == 1
    return found[0]


# --- healthy ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        load_stack_file("dev"),
        prod(),
        prod(**{"liftoff:certificateArn": CERTIFICATE}),
        load_stack_file(
            "dev",
            {
                "liftoff:nodeCapacityType": "SPOT",
                "liftoff:nodeInstanceTypes": '["m7i.large", "m6i.large", "t3.large"]',
            },
        ),
    ],
    ids=["dev", "prod", "prod-https", "dev-spot"],
)
def test_a_stack_as_configured_verifies_clean(aws: None, settings: StackSettings) -> None:
    world = deploy(settings)
    checks = run_verify(world.target())
    assert drifts(checks) == [] and not [c for c in checks if c.verdict == "error"]
    assert exit_status(checks) == 0
    # What each section looked at: one line per property, not a summary.
    looked_at = {(c.resource.split(" ")[0], c.check) for c in checks}
    for expected in [
        ("EKS", "Kubernetes version"),
        ("EKS", "secrets encryption key"),
        ("EKS", "public endpoint CIDRs"),
        ("access", "access policy"),
        ("node", "IMDSv2 (launch template http tokens)"),
        ("load", "WAF web ACL"),
        ("target", "healthy targets"),
        ("cache", "transit encryption"),
        ("cache", "engine version"),
        ("secret", "current version"),
        ("KMS", "automatic rotation"),
        ("budget", "notifications"),
        ("alarm", "exists and notifies"),
        ("SNS", "encryption key"),
    ]:
        assert expected in looked_at, expected
    desired = [c for c in checks if c.check == "desired size"]
    assert desired and all(c.verdict == "info" for c in desired)
    if settings.certificate_arn:
        assert {c.check for c in checks} >= {"HTTPS :443 TLS policy", "HTTPS :443 action"}
    if settings.node_capacity_type == "SPOT":
        assert any(
            c.resource.startswith(f"node group {system_node_group(settings.prefix)}-")
            for c in checks
        )


# --- drift, one property at a time -----------------------------------------------------------


def _cluster_logs(world: World) -> None:
    world.client("eks").update_cluster_config(
        name=world.outputs["clusterName"],
        logging={"clusterLogging": [{"types": ["api"], "enabled": True}]},
    )


def _cluster_cidrs(world: World) -> None:
    world.client("eks").update_cluster_config(
        name=world.outputs["clusterName"],
        resourcesVpcConfig={
            "endpointPublicAccess": True,
            "endpointPrivateAccess": True,
            "publicAccessCidrs": ["0.0.0.0/0"],
        },
    )


def _node_sizes(world: World) -> None:
    s = world.settings
    world.client("eks").update_nodegroup_config(
        clusterName=world.outputs["clusterName"],
        nodegroupName=world.outputs["nodeGroupNames"][0],
        scalingConfig={
            "minSize": s.node_min_size + 1,
            "maxSize": s.node_max_size,
            "desiredSize": s.node_min_size + 1,
        },
    )


def _desired_only(world: World) -> None:
    s = world.settings
    world.client("eks").update_nodegroup_config(
        clusterName=world.outputs["clusterName"],
        nodegroupName=world.outputs["nodeGroupNames"][0],
        scalingConfig={"minSize": s.node_min_size, "maxSize": s.node_max_size, "desiredSize": 11},
    )


def _alb_attribute(key: str) -> Callable[[World], None]:
    def change(world: World) -> None:
        world.client("elbv2").modify_load_balancer_attributes(
            LoadBalancerArn=world.outputs["albArn"], Attributes=[{"Key": key, "Value": "false"}]
        )

    return change


def _http_forwards(world: World) -> None:
    world.client("elbv2").modify_listener(
        ListenerArn=world.ids["listeners"][80],
        DefaultActions=[{"Type": "forward", "TargetGroupArn": world.outputs["targetGroupArn"]}],
    )


def _old_tls_policy(world: World) -> None:
    world.client("elbv2").modify_listener(
        ListenerArn=world.ids["listeners"][443], SslPolicy="ELBSecurityPolicy-2016-08"
    )


def _waf_detached(world: World) -> None:
    world.client("wafv2").disassociate_web_acl(ResourceArn=world.outputs["albArn"])


def _health_check_path(world: World) -> None:
    world.client("elbv2").modify_target_group(
        TargetGroupArn=world.outputs["targetGroupArn"], HealthCheckPath="/"
    )


def _no_targets(world: World) -> None:
    elb = world.client("elbv2")
    arn = world.outputs["targetGroupArn"]
    targets = [
        d["Target"]
        for d in elb.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]
    ]
    elb.deregister_targets(TargetGroupArn=arn, Targets=targets)


def _cache_failover_off(world: World) -> None:
    world.client("elasticache").modify_replication_group(
        ReplicationGroupId=world.outputs["cacheReplicationGroupId"], AutomaticFailoverEnabled=False
    )


def _cache_node_type(world: World) -> None:
    world.client("elasticache").modify_replication_group(
        ReplicationGroupId=world.outputs["cacheReplicationGroupId"],
        CacheNodeType="cache.r7g.xlarge",
    )


def _secret_other_key(world: World) -> None:
    other = world.client("kms").create_key()["KeyMetadata"]["Arn"]
    world.client("secretsmanager").update_secret(
        SecretId=world.outputs["secretArns"]["clientKeys"], KmsKeyId=other
    )


def _secret_deleted(world: World) -> None:
    world.client("secretsmanager").delete_secret(
        SecretId=world.outputs["secretArns"]["clientKeys"], RecoveryWindowInDays=7
    )


def _rotation_off(world: World) -> None:
    world.client("kms").disable_key_rotation(KeyId=world.outputs["dataKeyArn"])


def _key_pending_deletion(world: World) -> None:
    key_id = world.outputs["alertsKeyArn"].rsplit("/", 1)[-1]
    world.client("kms").schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)


def _notification_removed(world: World) -> None:
    s = world.settings
    world.client("budgets").delete_notification(
        AccountId="123456789012",
        BudgetName=world.outputs["budgetName"],
        Notification={
            "NotificationType": "ACTUAL",
            "ComparisonOperator": "GREATER_THAN",
            "Threshold": max(s.budget_thresholds),
            "ThresholdType": "PERCENTAGE",
        },
    )


def _alarm_deleted(world: World) -> None:
    world.client("cloudwatch").delete_alarms(AlarmNames=[world.outputs["alarmNames"][0]])


def _topic_key(world: World) -> None:
    world.client("sns").set_topic_attributes(
        TopicArn=world.outputs["alertTopicArn"],
        AttributeName="KmsMasterKeyId",
        AttributeValue="alias/aws/sns",
    )


@pytest.mark.parametrize(
    ("change", "resource", "check", "fix"),
    [
        (_cluster_logs, "EKS cluster", "control-plane log types", "liftoff:clusterLogTypes"),
        (
            _cluster_cidrs,
            "EKS cluster",
            "public endpoint CIDRs",
            "liftoff:clusterEndpointPublicCidrs",
        ),
        (_node_sizes, "node group", "min size", "liftoff:nodeMinSize"),
        (
            _alb_attribute("deletion_protection.enabled"),
            "load balancer",
            "deletion protection",
            "liftoff:albDeletionProtection",
        ),
        (
            _alb_attribute("access_logs.s3.enabled"),
            "load balancer",
            "access logs",
            "liftoff:albAccessLogs",
        ),
        (_waf_detached, "load balancer", "WAF web ACL", "pulumi up --stack prod"),
        (_health_check_path, "target group", "health check path", "pulumi up --stack prod"),
        (_no_targets, "target group", "healthy targets", "kubectl -n liftoff get pods"),
        (_cache_node_type, "cache", "node type", "liftoff:cacheNodeType"),
        (_secret_other_key, "secret", "KMS key", "pulumi up --stack prod"),
        (_secret_deleted, "secret", "exists", "aws secretsmanager restore-secret"),
        (_rotation_off, "KMS key", "automatic rotation", "enable-key-rotation"),
        (_key_pending_deletion, "KMS key", "state", "aws kms cancel-key-deletion"),
        (_notification_removed, "budget", "notifications", "liftoff:budgetThresholds"),
        (_alarm_deleted, "alarm", "exists and notifies", "pulumi up --stack prod"),
        (_topic_key, "SNS topic", "encryption key", "pulumi up --stack prod"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
def test_a_drift_made_after_deployment_is_reported_with_its_fix(
    aws: None, change: Callable[[World], None], resource: str, check: str, fix: str
) -> None:
    world = deploy(prod())
    assert exit_status(run_verify(world.target())) == 0
    change(world)
    found = only_drift(world)
    assert found.resource.startswith(resource) and found.check == check
    assert fix in found.fix
    assert found.expected != found.actual


def test_desired_size_is_reported_and_a_min_size_drift_names_its_key(aws: None) -> None:
    world = deploy(prod())
    _desired_only(world)
    checks = run_verify(world.target())
    assert exit_status(checks) == 0
    desired = next(c for c in checks if c.check == "desired size")
    assert (desired.verdict, desired.actual) == ("info", "11")
    _node_sizes(world)
    found = only_drift(world)
    assert (found.check, found.expected, found.actual) == ("min size", "3", "4")
    assert found.fix == (
        "pulumi up --stack prod (applies liftoff:nodeMinSize); to keep the live value instead: "
        "pulumi config set --stack prod liftoff:nodeMinSize 4"
    )


def test_prod_failover_off_is_drift_on_failover(aws: None) -> None:
    world = deploy(prod())
    _cache_failover_off(world)
    found = drifts(run_verify(world.target()))
    assert [(c.check, c.expected, c.actual) for c in found] == [
        ("automatic failover", "enabled", "disabled")
    ]
    assert "liftoff:cacheReplicas" in found[0].fix


def test_https_listener_drift(aws: None) -> None:
    world = deploy(prod(**{"liftoff:certificateArn": CERTIFICATE}))
    _http_forwards(world)
    found = only_drift(world)
    assert (found.check, found.expected, found.actual) == (
        "HTTP :80 action",
        "redirect to HTTPS:443 (HTTP_301)",
        "forward to the gateway target group",
    )
    _http_forwards_back = {
        "Type": "redirect",
        "RedirectConfig": {"Protocol": "HTTPS", "Port": "443", "StatusCode": "HTTP_301"},
    }
    world.client("elbv2").modify_listener(
        ListenerArn=world.ids["listeners"][80], DefaultActions=[_http_forwards_back]
    )
    _old_tls_policy(world)
    found = only_drift(world)
    assert (found.check, found.actual) == ("HTTPS :443 TLS policy", "ELBSecurityPolicy-2016-08")


@pytest.mark.parametrize(
    ("shape_change", "check", "fix"),
    [
        ({"kubernetes_version": "1.31"}, "Kubernetes version", "liftoff:kubernetesVersion"),
        ({"http_tokens": "optional"}, "IMDSv2 (launch template http tokens)", "pulumi up"),
        ({"capacity_type": "SPOT"}, "capacity type", "liftoff:nodeCapacityType"),
        ({"transit_encryption": False}, "transit encryption", "pulumi up"),
        ({"engine_version": "7.2.4"}, "engine version", "liftoff:cacheEngineVersion"),
        ({"budget_usd": 900.0}, "monthly limit (USD)", "liftoff:monthlyBudgetUsd 900.0"),
        (
            {"upstream_key_value": False},
            "current version",
            "pulumi config set --stack prod --secret liftoff:llmApiKey",
        ),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else None,
)
def test_a_resource_created_differently_is_drift(
    aws: None, shape_change: dict, check: str, fix: str
) -> None:
    """Properties moto cannot change after creation: the drifted resource is created so."""
    settings = prod()
    world = deploy(settings, replace(shape_for(settings), **shape_change))
    checks = drifts(run_verify(world.target()))
    # Transit encryption off also leaves the mode at "preferred".
    assert check in [c.check for c in checks]
    found = next(c for c in checks if c.check == check)
    assert fix in found.fix, found.fix


def test_deleted_resources_are_drift_to_redeploy(aws: None) -> None:
    world = deploy(load_stack_file("dev"))
    world.client("elasticache").delete_replication_group(
        ReplicationGroupId=world.outputs["cacheReplicationGroupId"]
    )
    world.client("budgets").delete_budget(
        AccountId="123456789012", BudgetName=world.outputs["budgetName"]
    )
    world.client("sns").delete_topic(TopicArn=world.outputs["alertTopicArn"])
    checks = run_verify(world.target())
    found = {(c.resource, c.check): c.actual for c in drifts(checks)}
    assert found == {
        ("cache liftoff-dev-cache", "status"): "deleting",  # as AWS shows it while it goes
        ("budget liftoff-dev-monthly", "exists"): "not found (NotFoundException)",
        ("SNS topic liftoff-dev-alerts", "encryption key"): "not found (NotFound)",
    }
    assert {c.fix for c in drifts(checks)} == {"pulumi up --stack dev"}
    assert exit_status(checks) == 1


def test_a_web_acl_on_a_stack_without_waf_is_drift(aws: None) -> None:
    world = deploy(load_stack_file("dev"))
    waf = world.client("wafv2")
    acl = waf.create_web_acl(
        Name="added-by-hand",
        Scope="REGIONAL",
        DefaultAction={"Allow": {}},
        VisibilityConfig={
            "SampledRequestsEnabled": False,
            "CloudWatchMetricsEnabled": False,
            "MetricName": "added-by-hand",
        },
    )["Summary"]["ARN"]
    waf.associate_web_acl(WebACLArn=acl, ResourceArn=world.outputs["albArn"])
    found = only_drift(world)
    assert (found.check, found.expected, found.actual) == ("WAF web ACL", "none", acl)
    assert "pulumi config set --stack dev liftoff:wafEnabled true" in found.fix


SPOT = {
    "liftoff:nodeCapacityType": "SPOT",
    "liftoff:nodeInstanceTypes": '["m7i.large", "m6i.large", "t3.large"]',
}


def test_a_node_group_change_not_yet_applied_is_drift(aws: None) -> None:
    """Deployed as Spot (with its system group), configured back to on-demand since."""
    world = deploy(load_stack_file("dev", SPOT))
    on_demand = load_stack_file(
        "dev", {"liftoff:nodeInstanceTypes": SPOT["liftoff:nodeInstanceTypes"]}
    )
    world.settings = on_demand
    found = {(c.resource.rsplit("-", 1)[0], c.check): c for c in drifts(run_verify(world.target()))}
    assert set(found) == {
        (f"node group {workload_node_group('liftoff-dev')}", "capacity type"),
        (f"node group {system_node_group('liftoff-dev')}", "declared"),
    }
    assert all("liftoff:nodeCapacityType" in c.fix for c in found.values())
    # And the other way: configured Spot, deployed without the system group.
    world.settings = load_stack_file("dev", SPOT)
    world.outputs["nodeGroupNames"] = world.outputs["nodeGroupNames"][:1]
    missing = only_drift(world)
    assert (missing.resource, missing.check, missing.actual) == (
        f"node group {system_node_group('liftoff-dev')}-*",
        "deployed",
        "absent",
    )

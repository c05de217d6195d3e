"""A deployed stack, built with boto3 in moto to match a settings object, for the verify tests.

moto 5 has no EKS access entries: `RecordedAccessEntries` answers those three EKS operations
from a dict, shaped as EKS answers them, on clients otherwise served by moto.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import boto3
import botocore.session
import pytest
from botocore.awsrequest import AWSResponse
from moto import mock_aws

from infra.access import grants
from infra.cache import member_cluster_ids
from infra.loadbalancer import APP_PORT, HEALTH_CHECK_PATH, TLS_POLICY
from infra.names import (
    budget_name,
    cache_group_id,
    secret_name,
    system_node_group,
    target_group_name,
    workload_node_group,
)
from infra.nodes import SYSTEM_INSTANCE_TYPE, SYSTEM_MAX_SIZE, SYSTEM_MIN_SIZE
from infra.settings import StackSettings
from infra.verify.checks import Target

ACCOUNT_ID = "123456789012"  # moto's
DEPLOYER = f"arn:aws:iam::{ACCOUNT_ID}:role/deployer"
NODE_ROLE = f"arn:aws:iam::{ACCOUNT_ID}:role/liftoff-nodes"
GROUP_SUFFIX = "20261201101500123400000001"  # the provider's 26-character suffix
# One botocore session for every world: its loader parses each service model once, not per test.
_BOTOCORE = botocore.session.Session()
SECRET_SLUGS = {
    "upstreamApiKey": "upstream-api-key",
    "redisAuthToken": "redis-auth-token",
    "clientKeys": "client-keys",
}


@dataclass
class Shape:
    """What was created; `shape_for(settings)` matches the settings, a test changes a field to
    create a resource that drifted from birth (moto cannot change it afterwards)."""

    kubernetes_version: str
    http_tokens: str = "required"
    capacity_type: str = "ON_DEMAND"
    transit_encryption: bool = True
    engine_version: str = "8.0"
    budget_usd: float = 300.0
    upstream_key_value: bool = True


def shape_for(settings: StackSettings) -> Shape:
    return Shape(
        kubernetes_version=settings.kubernetes_version,
        capacity_type=settings.node_capacity_type,
        engine_version=f"{settings.cache_engine_version}.1",
        budget_usd=settings.monthly_budget_usd,
    )


@dataclass
class RecordedAccessEntries:
    """Clients from `session`; EKS ones answer the access-entry operations from `entries`
    (principal ARN -> (entry type, policy ARNs))."""

    session: boto3.Session
    entries: dict[str, tuple[str, list[str]]] = field(default_factory=dict)

    def client(self, service_name: str) -> Any:
        client = self.session.client(service_name)
        if service_name == "eks":
            for operation in ("ListAccessEntries", "ListAssociatedAccessPolicies"):
                client.meta.events.register(f"before-call.eks.{operation}", self._answer)
            client.meta.events.register("before-call.eks.DescribeAccessEntry", self._answer)
        return client

    def _answer(self, model: Any, params: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict]:
        ok = AWSResponse("https://eks", 200, {}, None)
        if model.name == "ListAccessEntries":
            return ok, {"accessEntries": list(self.entries)}
        # The serialized request: /clusters/<name>/access-entries/<quoted principal ARN>[/...]
        principal = unquote(params["url_path"].split("/")[4])
        if principal not in self.entries:
            error = {"Error": {"Code": "ResourceNotFoundException", "Message": "no entry"}}
            return AWSResponse("https://eks", 404, {}, None), error
        kind, policies = self.entries[principal]
        if model.name == "DescribeAccessEntry":
            return ok, {"accessEntry": {"principalArn": principal, "type": kind}}
        return ok, {
            "associatedAccessPolicies": [
                {"policyArn": arn, "accessScope": {"type": "cluster"}} for arn in policies
            ]
        }


@dataclass
class World:
    settings: StackSettings
    session: boto3.Session
    outputs: dict[str, Any]
    clients: RecordedAccessEntries
    ids: dict[str, Any]

    def client(self, service: str) -> Any:
        return self.session.client(service)

    def target(self) -> Target:
        return Target(self.settings.stack, self.settings, self.outputs, self.clients, ACCOUNT_ID)


def deploy(settings: StackSettings, shape: Shape | None = None) -> World:
    """Every resource verify reads, as `pulumi up` of `settings` leaves them (under mock_aws)."""
    s, shape = settings, shape or shape_for(settings)
    session = boto3.Session(botocore_session=_BOTOCORE, region_name=s.region)
    ec2, kms = session.client("ec2"), session.client("kms")
    vpc = ec2.create_vpc(CidrBlock=s.vpc_cidr)["Vpc"]["VpcId"]
    base = s.vpc_cidr.split(".")
    subnets = [
        ec2.create_subnet(
            VpcId=vpc,
            CidrBlock=f"{base[0]}.{base[1]}.{i}.0/24",
            AvailabilityZone=f"{s.region}{'abc'[i]}",
        )["Subnet"]["SubnetId"]
        for i in range(2)
    ]
    keys = {}
    for output in ("clusterSecretsKeyArn", "dataKeyArn", "alertsKeyArn"):
        keys[output] = kms.create_key(Description=output)["KeyMetadata"]["Arn"]
        kms.enable_key_rotation(KeyId=keys[output])

    cluster_name = f"{s.prefix}-eks"
    eks = session.client("eks")
    eks.create_cluster(
        name=cluster_name,
        version=shape.kubernetes_version,
        roleArn=f"arn:aws:iam::{ACCOUNT_ID}:role/{s.prefix}-eks-cluster",
        resourcesVpcConfig={
            "subnetIds": subnets,
            "endpointPublicAccess": s.cluster_endpoint_public,
            "endpointPrivateAccess": True,
            "publicAccessCidrs": s.cluster_endpoint_public_cidrs,
        },
        logging={"clusterLogging": [{"types": list(s.cluster_log_types), "enabled": True}]},
        encryptionConfig=[
            {"resources": ["secrets"], "provider": {"keyArn": keys["clusterSecretsKeyArn"]}}
        ],
    )
    groups = [(workload_node_group(s.prefix), s.node_instance_types, shape.capacity_type)]
    sizes = {groups[0][0]: (s.node_min_size, s.node_desired_size, s.node_max_size)}
    if s.node_capacity_type == "SPOT":
        groups.append((system_node_group(s.prefix), [SYSTEM_INSTANCE_TYPE], "ON_DEMAND"))
        sizes[groups[1][0]] = (SYSTEM_MIN_SIZE, SYSTEM_MIN_SIZE, SYSTEM_MAX_SIZE)
    group_names = []
    templates = {}
    for group, types, capacity in groups:
        template = ec2.create_launch_template(
            LaunchTemplateName=f"{group}-lt",
            LaunchTemplateData={
                "MetadataOptions": {
                    "HttpEndpoint": "enabled",
                    "HttpTokens": shape.http_tokens,
                    "HttpPutResponseHopLimit": s.node_metadata_hop_limit,
                }
            },
        )["LaunchTemplate"]
        low, desired, high = sizes[group]
        name = f"{group}-{GROUP_SUFFIX}"
        eks.create_nodegroup(
            clusterName=cluster_name,
            nodegroupName=name,
            subnets=subnets,
            nodeRole=NODE_ROLE,
            instanceTypes=list(types),
            capacityType=capacity,
            scalingConfig={"minSize": low, "desiredSize": desired, "maxSize": high},
            launchTemplate={"id": template["LaunchTemplateId"], "version": "1"},
        )
        group_names.append(name)
        templates[name] = template["LaunchTemplateId"]
    entries: dict[str, tuple[str, list[str]]] = {
        grant.principal_arn: ("STANDARD", [grant.policy_arn])
        for grant in grants(s.cluster_admins, s.cluster_viewers, DEPLOYER)
    }
    entries[NODE_ROLE] = ("EC2_LINUX", [])  # EKS's own entry for the node role

    elb = session.client("elbv2")
    alb_arn = elb.create_load_balancer(
        Name=f"{s.prefix}-alb", Subnets=subnets, Type="application", Scheme="internet-facing"
    )["LoadBalancers"][0]["LoadBalancerArn"]
    elb.modify_load_balancer_attributes(
        LoadBalancerArn=alb_arn,
        Attributes=[
            {"Key": "deletion_protection.enabled", "Value": str(s.alb_deletion_protection).lower()},
            {"Key": "access_logs.s3.enabled", "Value": str(s.alb_access_logs).lower()},
        ],
    )
    tg_arn = elb.create_target_group(
        Name=target_group_name(s.prefix),
        Protocol="HTTP",
        Port=APP_PORT,
        VpcId=vpc,
        TargetType="ip",
        HealthCheckPath=HEALTH_CHECK_PATH,
    )["TargetGroups"][0]["TargetGroupArn"]
    elb.register_targets(
        TargetGroupArn=tg_arn,
        Targets=[
            {"Id": f"{base[0]}.{base[1]}.{i % 2}.{10 + i}", "Port": APP_PORT}
            for i in range(s.app_min_replicas)
        ],
    )
    forward = [{"Type": "forward", "TargetGroupArn": tg_arn}]
    listeners = {}
    if s.certificate_arn or s.domain_name:
        certificate = session.client("acm").request_certificate(DomainName="api.example.com")
        listeners[443] = elb.create_listener(
            LoadBalancerArn=alb_arn,
            Port=443,
            Protocol="HTTPS",
            SslPolicy=TLS_POLICY,
            Certificates=[{"CertificateArn": certificate["CertificateArn"]}],
            DefaultActions=forward,
        )["Listeners"][0]["ListenerArn"]
        http_actions: list[dict[str, Any]] = [
            {
                "Type": "redirect",
                "RedirectConfig": {"Protocol": "HTTPS", "Port": "443", "StatusCode": "HTTP_301"},
            }
        ]
    else:
        http_actions = forward
    listeners[80] = elb.create_listener(
        LoadBalancerArn=alb_arn, Port=80, Protocol="HTTP", DefaultActions=http_actions
    )["Listeners"][0]["ListenerArn"]
    web_acl_arn = None
    if s.waf_enabled:
        waf = session.client("wafv2")
        web_acl_arn = waf.create_web_acl(
            Name=f"{s.prefix}-alb",
            Scope="REGIONAL",
            DefaultAction={"Allow": {}},
            VisibilityConfig={
                "SampledRequestsEnabled": True,
                "CloudWatchMetricsEnabled": True,
                "MetricName": f"{s.prefix}-alb",
            },
        )["Summary"]["ARN"]
        waf.associate_web_acl(WebACLArn=web_acl_arn, ResourceArn=alb_arn)

    group_id = cache_group_id(s.prefix)
    elasticache = session.client("elasticache")
    ha = s.cache_replicas >= 1
    elasticache.create_replication_group(
        ReplicationGroupId=group_id,
        ReplicationGroupDescription=f"{s.prefix}: cache",
        Engine=s.cache_engine,
        EngineVersion=s.cache_engine_version,
        CacheNodeType=s.cache_node_type,
        NumCacheClusters=1 + s.cache_replicas,
        # moto 5.2 counts the members from ReplicasPerNodeGroup only.
        ReplicasPerNodeGroup=s.cache_replicas,
        AutomaticFailoverEnabled=ha,
        MultiAZEnabled=ha,
        TransitEncryptionEnabled=shape.transit_encryption,
        TransitEncryptionMode="required" if shape.transit_encryption else "preferred",
        AtRestEncryptionEnabled=True,
        KmsKeyId=keys["dataKeyArn"],
        AuthToken="a" * 64,
    )
    # moto keeps no cache cluster per member; AWS reports the engine version there.
    elasticache.create_cache_cluster(
        CacheClusterId=member_cluster_ids(group_id, s.cache_replicas)[0],
        ReplicationGroupId=group_id,
        Engine=s.cache_engine,
        EngineVersion=shape.engine_version,
        CacheNodeType=s.cache_node_type,
    )

    manager = session.client("secretsmanager")
    secret_arns = {}
    for output, slug in SECRET_SLUGS.items():
        value = (
            {}
            if output == "upstreamApiKey" and not shape.upstream_key_value
            else {"SecretString": f"value-of-{slug}"}
        )
        secret_arns[output] = manager.create_secret(
            Name=secret_name(s.prefix, slug), KmsKeyId=keys["dataKeyArn"], **value
        )["ARN"]

    sns = session.client("sns")
    topic_arn = sns.create_topic(
        Name=f"{s.prefix}-alerts", Attributes={"KmsMasterKeyId": keys["alertsKeyArn"]}
    )["TopicArn"]
    notifications = [("ACTUAL", t) for t in sorted(set(s.budget_thresholds))]
    if s.budget_forecast_threshold is not None:
        notifications.append(("FORECASTED", s.budget_forecast_threshold))
    session.client("budgets").create_budget(
        AccountId=ACCOUNT_ID,
        Budget={
            "BudgetName": budget_name(s.prefix),
            "BudgetLimit": {"Amount": f"{shape.budget_usd:.2f}", "Unit": "USD"},
            "TimeUnit": "MONTHLY",
            "BudgetType": "COST",
        },
        NotificationsWithSubscribers=[
            {
                "Notification": {
                    "NotificationType": kind,
                    "ComparisonOperator": "GREATER_THAN",
                    "Threshold": threshold,
                    "ThresholdType": "PERCENTAGE",
                },
                "Subscribers": [{"SubscriptionType": "SNS", "Address": topic_arn}],
            }
            for kind, threshold in notifications
        ],
    )
    cloudwatch = session.client("cloudwatch")
    alarm_names = [f"{s.prefix}-{n}" for n in ("alb-5xx", "target-5xx", "target-response-time")]
    for member in member_cluster_ids(group_id, s.cache_replicas):
        node = member.removeprefix(f"{s.prefix}-")
        alarm_names += [f"{s.prefix}-{node}-{m}" for m in ("cpu", "memory", "evictions")]
    for name in alarm_names:
        cloudwatch.put_metric_alarm(
            AlarmName=name,
            Namespace="AWS/ApplicationELB",
            MetricName="HTTPCode_ELB_5XX_Count",
            Statistic="Sum",
            Period=300,
            EvaluationPeriods=1,
            Threshold=10,
            ComparisonOperator="GreaterThanThreshold",
            AlarmActions=[topic_arn],
            OKActions=[topic_arn],
        )

    outputs = {
        "url": f"http://{s.prefix}-alb.{s.region}.elb.amazonaws.com",
        "clusterName": cluster_name,
        "kubeconfig": '{"users": [{"user": {"token": "KUBECONFIG-SECRET-MARKER"}}]}',
        "secretArns": secret_arns,
        "budgetName": budget_name(s.prefix),
        "alertTopicArn": topic_arn,
        "albArn": alb_arn,
        "targetGroupArn": tg_arn,
        "webAclArn": web_acl_arn,
        **keys,
        "nodeGroupNames": group_names,
        "cacheReplicationGroupId": group_id,
        "alarmNames": alarm_names,
        "deployerArn": DEPLOYER,
        "region": s.region,
    }
    ids = {"vpc": vpc, "subnets": subnets, "listeners": listeners, "templates": templates}
    return World(s, session, outputs, RecordedAccessEntries(session, entries), ids)


@contextmanager
def moto_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto's account, and nothing from the machine running the tests."""
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")  # no AMI is looked at: faster
    with mock_aws():
        yield

"""Every policy rule has a passing and a failing case over hand-written resource records (camelCase
inputs as Pulumi's engine sends them), and the CrossGuard pack in infra/policy/ is built from the
same rules and reports the same violations through pulumi_policy's own argument objects."""

from __future__ import annotations

import importlib
import json
import select
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import empty_pb2, struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc
from pulumi_policy import (
    EnforcementLevel,
    Policy,
    PolicyCustomTimeouts,
    PolicyProviderResource,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, UnknownValueError, unknown_checking_proxy

from infra.mocking import run_program
from infra.plan import mock_resource_ids
from infra.policies import (
    RULES,
    RULES_BY_ID,
    Finding,
    ResourceRecord,
    RuleContext,
    evaluate,
    rules_markdown,
    supports_tags,
)
from infra.policy.pack import build_policies, environment_of, stack_of

REPO = Path(__file__).resolve().parents[2]
DEV = RuleContext(stack="dev", region="us-east-1", environment="dev")
PROD = RuleContext(stack="prod", region="us-west-2", environment="prod")
TAGS = {"project": "liftoff", "environment": "prod"}

CLUSTER = "aws:eks/cluster:Cluster"
LT = "aws:ec2/launchTemplate:LaunchTemplate"
CACHE = "aws:elasticache/replicationGroup:ReplicationGroup"
LB = "aws:lb/loadBalancer:LoadBalancer"
LISTENER = "aws:lb/listener:Listener"
SG = "aws:ec2/securityGroup:SecurityGroup"


def rec(
    type_: str, name: str = "r", *, id: str | None = None, deps: dict | None = None, **inputs: Any
) -> ResourceRecord:
    return ResourceRecord(
        type=type_,
        name=name,
        inputs=inputs,
        urn=urn(type_, name),
        id=id,
        property_dependencies=deps or {},
    )


def urn(type_: str, name: str) -> str:
    return f"urn:pulumi:test::liftoff::{type_}::{name}"


def findings(
    rule_id: str, resources: Sequence[ResourceRecord], context: RuleContext
) -> list[Finding]:
    verdict = next(v for v in evaluate(resources, context) if v.rule.id == rule_id)
    return list(verdict.findings)


SECURE_CLUSTER = {
    "encryptionConfig": {
        "resources": ["secrets"],
        "provider": {"keyArn": "arn:aws:kms:us-west-2:1:key/k"},
    },
    "enabledClusterLogTypes": ["api", "audit", "authenticator", "controllerManager", "scheduler"],
    "vpcConfig": {"endpointPublicAccess": True, "publicAccessCidrs": ["203.0.113.0/24"]},
}
SECURE_LT = {
    "metadataOptions": {"httpTokens": "required", "httpPutResponseHopLimit": 1},
    "blockDeviceMappings": [
        {
            "deviceName": "/dev/xvda",
            "ebs": {"encrypted": "true", "volumeType": "gp3", "volumeSize": 50},
        }
    ],
}
SECURE_CACHE = {
    "atRestEncryptionEnabled": True,
    "kmsKeyId": "arn:aws:kms:us-west-2:1:key/k",
    "transitEncryptionEnabled": True,
    "authTokenWo": "token-value-for-tests",
    "numCacheClusters": 3,
    "automaticFailoverEnabled": True,
    "multiAzEnabled": True,
}
SECURE_LB = {
    "loadBalancerType": "application",
    "dropInvalidHeaderFields": True,
    "enableDeletionProtection": True,
    "accessLogs": {"bucket": "logs", "enabled": True},
}
HTTPS = {
    "protocol": "HTTPS",
    "port": 443,
    "certificateArn": "arn:aws:acm:us-west-2:123456789012:certificate/abc",
    "sslPolicy": "ELBSecurityPolicy-TLS13-1-2-2021-06",
}
REDIRECT = {
    "protocol": "HTTP",
    "port": 80,
    "defaultActions": [{"type": "redirect", "redirect": {"protocol": "HTTPS", "port": "443"}}],
}
FORWARD = {"protocol": "HTTP", "port": 80, "defaultActions": [{"type": "forward"}]}


def _with(base: dict, **changes: Any) -> dict:
    return {**base, **changes}


def cache(**changes: Any) -> ResourceRecord:
    """The compliant replication group, with `changes` applied."""
    return rec(CACHE, "cache", **_with(SECURE_CACHE, **changes))


def alb(**changes: Any) -> ResourceRecord:
    """The compliant load balancer, with `changes` applied."""
    return rec(LB, "alb", **_with(SECURE_LB, **changes))


def _lb_with_group(open_port: int, *, attached: bool = True) -> list[ResourceRecord]:
    group = rec(
        SG,
        "alb-sg",
        ingress=[
            {
                "protocol": "tcp",
                "fromPort": open_port,
                "toPort": open_port,
                "cidrBlocks": ["0.0.0.0/0"],
            }
        ],
    )
    lb_deps = (
        {"securityGroups": [group.urn]} if attached else {"securityGroups": [urn(SG, "other")]}
    )
    other = rec(SG, "other")
    lb = rec(LB, "alb", deps=lb_deps, securityGroups=["sg-1"], **SECURE_LB)
    return [group, other, lb]


def _node_group_in(subnet: ResourceRecord, *extra: ResourceRecord) -> list[ResourceRecord]:
    group = rec(
        "aws:eks/nodeGroup:NodeGroup",
        "nodes",
        deps={"subnetIds": [subnet.urn]},
        subnetIds=["subnet-1"],
    )
    return [subnet, group, *extra]


PRIVATE_SUBNET = rec("aws:ec2/subnet:Subnet", "private-0", mapPublicIpOnLaunch=False)
PUBLIC_SUBNET = rec("aws:ec2/subnet:Subnet", "public-0", tags={"kubernetes.io/role/elb": "1"})
# A subnet that only an internet-gateway route makes public, traced through ids.
ROUTED_SUBNET = rec("aws:ec2/subnet:Subnet", "routed-0", id="subnet-9")
IGW_ROUTE = [
    rec("aws:ec2/routeTable:RouteTable", "rt", id="rtb-1"),
    rec("aws:ec2/route:Route", "default", routeTableId="rtb-1", gatewayId="igw-1"),
    rec(
        "aws:ec2/routeTableAssociation:RouteTableAssociation",
        "rta",
        routeTableId="rtb-1",
        subnetId="subnet-9",
    ),
]

HELM = "kubernetes:helm.sh/v3:Release"
ADDON = "aws:eks/addon:Addon"
ROLE = "aws:iam/role:Role"
ATTACH = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
CNI_POLICY = "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy"
CNI_ENFORCING = '{"enableNetworkPolicy": "true"}'
EC2_TRUST = '{"Statement": [{"Principal": {"Service": "ec2.amazonaws.com"}}]}'
IRSA_TRUST = '{"Statement": [{"Principal": {"Federated": "arn:aws:iam::1:oidc-provider/x"}}]}'

WEB_ACL = "aws:wafv2/webAcl:WebAcl"
CORE_RULE_SET = {
    "name": "crs",
    "overrideAction": {"none": {}},
    "statement": {
        "managedRuleGroupStatement": {"name": "AWSManagedRulesCommonRuleSet", "vendorName": "AWS"}
    },
}
BODY_SIZE_COUNTED = {"name": "SizeRestrictions_BODY", "actionToUse": {"count": {}}}

NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
BUCKET = "aws:s3/bucket:Bucket"
BUCKET_PAB = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
ALL_BLOCKED = {
    "blockPublicAcls": True,
    "blockPublicPolicy": True,
    "ignorePublicAcls": True,
    "restrictPublicBuckets": True,
}

# rule id -> (context, passing resources, failing resources, text the failure message contains)
CASES: dict[str, list[tuple[RuleContext, list[ResourceRecord], list[ResourceRecord], str]]] = {
    "CKV_AWS_58": [
        (DEV, [rec(CLUSTER, "eks", **SECURE_CLUSTER)], [rec(CLUSTER, "eks")], "KMS"),
        (
            DEV,
            [rec(CLUSTER, "eks", **SECURE_CLUSTER)],
            [rec(CLUSTER, "eks", encryptionConfig={"resources": ["secrets"], "provider": {}})],
            "KMS",
        ),
    ],
    "CKV_AWS_37": [
        (
            DEV,
            [rec(CLUSTER, "eks", **SECURE_CLUSTER)],
            [rec(CLUSTER, "eks", enabledClusterLogTypes=["api", "audit"])],
            "authenticator, controllerManager, scheduler",
        )
    ],
    "CKV_AWS_38": [
        (
            PROD,
            [rec(CLUSTER, "eks", **SECURE_CLUSTER)],
            [
                rec(
                    CLUSTER,
                    "eks",
                    vpcConfig={"endpointPublicAccess": True, "publicAccessCidrs": ["0.0.0.0/0"]},
                )
            ],
            "whole internet",
        ),
        (
            PROD,
            [rec(CLUSTER, "eks", vpcConfig={"endpointPublicAccess": False})],
            [rec(CLUSTER, "eks", vpcConfig={})],  # public by default, no allowlist
            "whole internet",
        ),
    ],
    "CKV_AWS_79": [
        (
            DEV,
            [rec(LT, "lt", **SECURE_LT)],
            [rec(LT, "lt", metadataOptions={"httpTokens": "optional"})],
            "IMDSv1",
        ),
        (
            DEV,
            [
                rec(
                    LT,
                    "lt",
                    metadataOptions={"httpTokens": "required", "httpPutResponseHopLimit": 2},
                )
            ],
            [
                rec(
                    LT,
                    "lt",
                    metadataOptions={"httpTokens": "required", "httpPutResponseHopLimit": 3},
                )
            ],
            "hop limit 3",
        ),
    ],
    "CKV_AWS_8": [
        (
            DEV,
            [rec(LT, "lt", **SECURE_LT)],
            [
                rec(
                    LT,
                    "lt",
                    blockDeviceMappings=[
                        {"deviceName": "/dev/xvda", "ebs": {"encrypted": "false"}}
                    ],
                )
            ],
            "/dev/xvda is not encrypted",
        ),
        (DEV, [rec(LT, "lt", **SECURE_LT)], [rec(LT, "lt")], "no EBS block device mapping"),
        (
            DEV,
            [rec("aws:ebs/volume:Volume", "vol", encrypted=True)],
            [rec("aws:ebs/volume:Volume", "vol", encrypted=False)],
            "not encrypted",
        ),
    ],
    "CKV_AWS_29": [
        (
            DEV,
            [cache()],
            [cache(atRestEncryptionEnabled=False)],
            "at rest",
        )
    ],
    "CKV_AWS_191": [
        (
            DEV,
            [cache()],
            [cache(kmsKeyId=None)],
            "AWS-owned key",
        )
    ],
    "CKV_AWS_30": [
        (
            DEV,
            [cache()],
            [cache(transitEncryptionEnabled=False)],
            "TLS",
        ),
        (
            DEV,
            [cache(transitEncryptionMode="required")],
            [cache(transitEncryptionMode="preferred")],
            "plaintext",
        ),
    ],
    "CKV_AWS_31": [
        (
            DEV,
            [cache()],
            [cache(authTokenWo=None)],
            "without an AUTH token",
        ),
        (
            DEV,
            [cache(authTokenWo=None, userGroupIds=["ug-1"])],
            [cache(transitEncryptionEnabled=False)],
            "without TLS",
        ),
    ],
    "LIFTOFF_CACHE_FAILOVER": [
        (
            PROD,
            [cache()],
            [cache(numCacheClusters=1)],
            "single node",
        ),
        (
            DEV,
            [cache(numCacheClusters=1, automaticFailoverEnabled=False)],
            [cache(automaticFailoverEnabled=False)],
            "no multi-AZ automatic failover",
        ),
    ],
    "CKV_AWS_149": [
        (
            DEV,
            [
                rec(
                    "aws:secretsmanager/secret:Secret",
                    "llm",
                    kmsKeyId="arn:aws:kms:us-east-1:1:key/k",
                )
            ],
            [rec("aws:secretsmanager/secret:Secret", "llm")],
            "aws/secretsmanager",
        )
    ],
    "CKV_AWS_7": [
        (
            DEV,
            [
                rec("aws:kms/key:Key", "key", enableKeyRotation=True),
                rec("aws:kms/key:Key", "signing", customerMasterKeySpec="RSA_2048"),
            ],
            [rec("aws:kms/key:Key", "key", enableKeyRotation=False)],
            "rotate",
        )
    ],
    "CKV_AWS_131": [
        (
            DEV,
            [alb(), rec(LB, "nlb", loadBalancerType="network")],
            [alb(dropInvalidHeaderFields=False)],
            "invalid header",
        )
    ],
    "CKV_AWS_150": [
        (
            PROD,
            [alb()],
            [alb(enableDeletionProtection=False)],
            "deleted",
        )
    ],
    "CKV_AWS_91": [
        (
            PROD,
            [alb()],
            [alb(accessLogs={"bucket": "logs", "enabled": False})],
            "no access logs",
        )
    ],
    "CKV_AWS_103": [
        (
            DEV,
            [rec(LISTENER, "https", **HTTPS)],
            [rec(LISTENER, "https", **_with(HTTPS, sslPolicy="ELBSecurityPolicy-2016-08"))],
            "older than 1.2",
        ),
        (
            DEV,
            [rec(LISTENER, "https", **HTTPS)],
            [rec(LISTENER, "https", **_with(HTTPS, certificateArn=None))],
            "without a certificate",
        ),
    ],
    "CKV2_AWS_20": [
        (
            DEV,
            [rec(LISTENER, "https", **HTTPS), rec(LISTENER, "http", **REDIRECT)],
            [rec(LISTENER, "https", **HTTPS), rec(LISTENER, "http", **FORWARD)],
            "plain HTTP although an HTTPS listener exists",
        )
    ],
    "LIFTOFF_PROD_HTTPS": [
        (
            PROD,
            [rec(LISTENER, "https", **HTTPS), rec(LISTENER, "http", **REDIRECT)],
            [rec(LISTENER, "http", **FORWARD)],
            "plain HTTP only",
        )
    ],
    "LIFTOFF_WAF_BODY_SIZE": [
        (
            DEV,
            [
                rec(
                    WEB_ACL,
                    "waf",
                    rules=[
                        {
                            **CORE_RULE_SET,
                            "statement": {
                                "managedRuleGroupStatement": {
                                    **CORE_RULE_SET["statement"]["managedRuleGroupStatement"],
                                    "ruleActionOverrides": [BODY_SIZE_COUNTED],
                                }
                            },
                        }
                    ],
                )
            ],
            [rec(WEB_ACL, "waf", rules=[CORE_RULE_SET])],
            "blocks 8193-byte bodies",
        )
    ],
    "CKV_AWS_260": [
        (DEV, _lb_with_group(443), _lb_with_group(22), "tcp 22-22 to 0.0.0.0/0"),
        (DEV, _lb_with_group(80), _lb_with_group(443, attached=False), "no load balancer uses"),
        (
            DEV,
            [
                rec(
                    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
                    "cache-from-nodes",
                    ipProtocol="tcp",
                    fromPort=6379,
                    toPort=6379,
                    referencedSecurityGroupId="sg-nodes",
                )
            ],
            [
                rec(
                    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
                    "cache-open",
                    ipProtocol="tcp",
                    fromPort=6379,
                    toPort=6379,
                    cidrIpv6="::/0",
                )
            ],
            "6379-6379 to ::/0",
        ),
        (
            DEV,
            [
                rec(
                    "aws:ec2/securityGroupRule:SecurityGroupRule",
                    "egress",
                    type="egress",
                    protocol="-1",
                    cidrBlocks=["0.0.0.0/0"],
                )
            ],
            [
                rec(
                    "aws:ec2/securityGroupRule:SecurityGroupRule",
                    "all",
                    type="ingress",
                    protocol="-1",
                    cidrBlocks=["0.0.0.0/0"],
                )
            ],
            "-1 0-65535",
        ),
    ],
    "LIFTOFF_NODES_PRIVATE": [
        (
            DEV,
            _node_group_in(PRIVATE_SUBNET),
            _node_group_in(PUBLIC_SUBNET),
            "public subnets: public-0",
        ),
        (
            DEV,
            _node_group_in(PRIVATE_SUBNET),
            _node_group_in(ROUTED_SUBNET, *IGW_ROUTE),
            "routed-0",
        ),
    ],
    "CKV2_AWS_11": [
        (
            DEV,
            [
                rec("aws:ec2/vpc:Vpc", "vpc", id="vpc-1"),
                rec("aws:ec2/flowLog:FlowLog", "fl", vpcId="vpc-1", trafficType="ALL"),
            ],
            [
                rec("aws:ec2/vpc:Vpc", "vpc", id="vpc-1"),
                rec("aws:ec2/vpc:Vpc", "other", id="vpc-2"),
                rec("aws:ec2/flowLog:FlowLog", "fl", vpcId="vpc-1"),
            ],
            "Vpc 'other' has no flow log",
        )
    ],
    "LIFTOFF_BUDGET": [
        (
            DEV,
            [
                rec(
                    "aws:budgets/budget:Budget",
                    "budget",
                    budgetType="COST",
                    notifications=[{"threshold": 80}],
                )
            ],
            [rec("aws:ec2/vpc:Vpc", "vpc")],
            "no AWS Budgets cost budget",
        ),
        (
            DEV,
            [
                rec(
                    "aws:budgets/budget:Budget",
                    "budget",
                    budgetType="COST",
                    notifications=[{"threshold": 80}],
                )
            ],
            [rec("aws:budgets/budget:Budget", "budget", budgetType="COST", notifications=[])],
            "sends no notifications",
        ),
    ],
    "LIFTOFF_TAGS": [
        (
            DEV,
            [
                rec("aws:ec2/vpc:Vpc", "vpc", tags=TAGS),
                rec("aws:ec2/route:Route", "route"),  # takes no tags
                rec("kubernetes:core/v1:Namespace", "ns"),
            ],
            [rec("aws:ec2/vpc:Vpc", "vpc", tags={"project": "liftoff"})],
            "lacks tags: environment",
        ),
        (
            RuleContext("dev", "us-east-1", "dev", default_tags=TAGS),
            [rec("aws:ec2/vpc:Vpc", "vpc")],
            [rec("aws:ec2/vpc:Vpc", "vpc", tags={"project": ""})],
            "lacks tags",
        ),
    ],
    # EKS: the security section's promises (infra/addons.py)
    "LIFTOFF_NETWORK_POLICY_ENFORCED": [
        (
            DEV,
            [
                rec(HELM, "gateway", values={"networkPolicy": {"enabled": True}}),
                rec(ADDON, "cni", addonName="vpc-cni", configurationValues=CNI_ENFORCING),
            ],
            [
                rec(HELM, "gateway", values={"networkPolicy": {"enabled": True}}),
                rec(ADDON, "cni", addonName="vpc-cni", configurationValues="{}"),
            ],
            "does not set enableNetworkPolicy",
        ),
        (
            DEV,
            # A release without a NetworkPolicy needs no enforcement.
            [
                rec(HELM, "gateway", values={"networkPolicy": {"enabled": False}}),
                rec(ADDON, "cni", addonName="vpc-cni"),
            ],
            [rec(HELM, "gateway", values={"networkPolicy": {"enabled": True}})],
            "no vpc-cni add-on",
        ),
    ],
    "LIFTOFF_CNI_OWN_ROLE": [
        (
            DEV,
            [
                rec(ROLE, "cni-role", assumeRolePolicy=IRSA_TRUST),
                rec(ATTACH, "cni", deps={"role": [urn(ROLE, "cni-role")]}, policyArn=CNI_POLICY),
            ],
            [
                rec(ROLE, "node-role", assumeRolePolicy=EC2_TRUST),
                rec(ATTACH, "cni", deps={"role": [urn(ROLE, "node-role")]}, policyArn=CNI_POLICY),
            ],
            "EC2 (node) role",
        )
    ],
    # Day-one gaps (more cases in test_policy_gaps.py)
    "LIFTOFF_NODES_LAUNCH_TEMPLATE": [
        (
            DEV,
            [rec(NODE_GROUP, "nodes", launchTemplate={"id": "lt-1", "version": "1"})],
            [rec(NODE_GROUP, "nodes", launchTemplate={"version": "1"})],
            "has no launch template",
        )
    ],
    "CKV2_AWS_6": [
        (
            DEV,
            [
                rec(BUCKET, "logs", id="logs-1"),
                rec(BUCKET_PAB, "logs-private", bucket="logs-1", **ALL_BLOCKED),
            ],
            [
                rec(BUCKET, "logs", id="logs-1"),
                rec(BUCKET_PAB, "logs-private", bucket="logs-1", **ALL_BLOCKED),
                rec(BUCKET, "data", id="data-1"),
            ],
            "Bucket 'data' has no public access block",
        )
    ],
    "LIFTOFF_RESOURCE_US_REGION": [
        (
            DEV,
            [rec(BUCKET, "logs", region="us-west-2"), rec(BUCKET, "default")],
            [rec(BUCKET, "logs", region="eu-west-1")],
            "placed in eu-west-1",
        )
    ],
    "LIFTOFF_US_REGION": [
        (
            DEV,
            [rec("aws:ec2/vpc:Vpc", "vpc")],
            [rec("aws:ec2/vpc:Vpc", "vpc")],
            "eu-west-1 is not a US region",
        )
    ],
}
# The region rule fails by context, not by resource.
FAILING_CONTEXT = {"LIFTOFF_US_REGION": RuleContext("dev", "eu-west-1", "dev")}


def test_every_rule_has_cases() -> None:
    assert set(CASES) == {rule.id for rule in RULES}


def test_rule_ids_are_unique_and_checkov_named_where_one_exists() -> None:
    ids = [rule.id for rule in RULES]
    assert len(ids) == len(set(ids))
    for expected in (
        "CKV_AWS_58",
        "CKV_AWS_79",
        "CKV_AWS_30",
        "CKV_AWS_31",
        "CKV_AWS_131",
        "CKV_AWS_149",
    ):
        assert expected in RULES_BY_ID
    assert "CKV_AWS_39" in RULES_BY_ID["CKV_AWS_38"].also
    assert "CKV_AWS_2" in RULES_BY_ID["CKV2_AWS_20"].also


@pytest.mark.parametrize(
    ("rule_id", "case"),
    [(rule_id, i) for rule_id, cases in CASES.items() for i in range(len(cases))],
)
def test_rule_passes_and_fails(rule_id: str, case: int) -> None:
    context, passing, failing, expected = CASES[rule_id][case]
    assert findings(rule_id, passing, context) == []
    failed = findings(rule_id, failing, FAILING_CONTEXT.get(rule_id, context))
    assert failed, f"{rule_id} did not flag its failing case"
    rule = RULES_BY_ID[rule_id]
    for finding in failed:
        assert finding.rule == rule_id
        assert finding.severity == rule.severity
        assert "Fix:" in finding.message and rule.fix in finding.message
        if finding.resource != "stack":
            assert f"'{finding.resource}'" in finding.message  # names the resource
    assert any(expected in f.message for f in failed), [f.message for f in failed]


def test_production_only_rules_do_not_apply_outside_prod() -> None:
    open_cluster = rec(CLUSTER, "eks", vpcConfig={"publicAccessCidrs": ["0.0.0.0/0"]})
    unprotected = rec(LB, "alb", loadBalancerType="application", dropInvalidHeaderFields=True)
    verdicts = {v.rule.id: v for v in evaluate([open_cluster, unprotected], DEV)}
    for rule_id in ("CKV_AWS_38", "CKV_AWS_150", "CKV_AWS_91", "LIFTOFF_PROD_HTTPS"):
        assert not verdicts[rule_id].applicable and not verdicts[rule_id].findings
    prod = {v.rule.id: v for v in evaluate([open_cluster, unprotected], PROD)}
    assert (
        prod["CKV_AWS_38"].findings and prod["CKV_AWS_150"].findings and prod["CKV_AWS_91"].findings
    )


def test_cache_with_replicas_passes_in_dev_only_with_failover() -> None:
    single = cache(numCacheClusters=None, replicasPerNodeGroup=0)
    assert findings("LIFTOFF_CACHE_FAILOVER", [single], DEV) == []
    assert findings("LIFTOFF_CACHE_FAILOVER", [single], PROD)


def test_supports_tags_reads_the_sdk() -> None:
    assert supports_tags("aws:ec2/vpc:Vpc")
    assert supports_tags("aws:eks/cluster:Cluster")
    assert not supports_tags("aws:ec2/route:Route")
    assert not supports_tags("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    assert not supports_tags("kubernetes:helm.sh/v3:Release")


# --- the CrossGuard pack ---------------------------------------------------------------------


def _options() -> PolicyResourceOptions:
    return PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [], None)


def _provider(region: str = "us-west-2", **props: Any) -> PolicyProviderResource:
    return PolicyProviderResource(
        "pulumi:providers:aws",
        {"region": region, **props},
        "urn:pulumi:prod::liftoff::pulumi:providers:aws::default",
        "default",
    )


def _resource_args(
    type_: str, props: dict, stack: str = "prod", region: str = "us-west-2"
) -> ResourceValidationArgs:
    return ResourceValidationArgs(
        resource_type=type_,
        props=unknown_checking_proxy(props),
        urn=f"urn:pulumi:{stack}::liftoff::{type_}::thing",
        name="thing",
        opts=_options(),
        provider=_provider(region),
    )


def _policy(name: str) -> Policy:
    return next(p for p in build_policies() if p.name == name)


def _violations(
    policy: Policy, args: ResourceValidationArgs | StackValidationArgs
) -> list[tuple[str, str | None]]:
    reported: list[tuple[str, str | None]] = []
    policy.validate(args, lambda message, urn=None: reported.append((message, urn)))
    return reported


def test_pack_entry_point_builds_one_policy_per_rule() -> None:
    main = importlib.import_module("infra.policy.__main__")  # importing must not start the server
    assert [p.name for p in main.policies] == [rule.id for rule in RULES]
    for policy, rule in zip(main.policies, RULES, strict=True):
        expected = (
            EnforcementLevel.MANDATORY if rule.severity == "error" else EnforcementLevel.ADVISORY
        )
        assert policy.enforcement_level == expected
        assert policy.description == rule.title and policy.remediation_steps == rule.fix
        kind = StackValidationPolicy if rule.check_stack else ResourceValidationPolicy
        assert isinstance(policy, kind)
    assert RULES_BY_ID["CKV_AWS_191"].severity == "warning"
    assert _policy("CKV_AWS_191").enforcement_level == EnforcementLevel.ADVISORY


def test_pack_project_file_points_at_the_repository_package() -> None:
    pack_dir = REPO / "infra" / "policy"
    project = yaml.safe_load((pack_dir / "PulumiPolicy.yaml").read_text())
    assert project["runtime"]["name"] == "python"
    assert (pack_dir / project["runtime"]["options"]["virtualenv"] / "bin" / "python").exists()
    requirement = (pack_dir / "requirements.txt").read_text().split()[-1]
    assert (pack_dir / requirement / "pyproject.toml").exists()


def test_pack_resource_policy_reports_a_failing_resource() -> None:
    policy = _policy("CKV_AWS_58")
    failing = _resource_args(CLUSTER, {"name": "eks"})
    passing = _resource_args(CLUSTER, SECURE_CLUSTER)
    [(message, _)] = _violations(policy, failing)
    assert "does not encrypt Kubernetes secrets" in message and "Fix:" in message
    assert _violations(policy, passing) == []
    assert _violations(policy, _resource_args(LT, {})) == []  # other types are not its business


def test_pack_production_rules_follow_the_stack_name() -> None:
    policy = _policy("CKV_AWS_150")
    props = _with(SECURE_LB, enableDeletionProtection=False)
    assert _violations(policy, _resource_args(LB, props, stack="prod"))
    assert _violations(policy, _resource_args(LB, props, stack="acme-prod"))
    assert _violations(policy, _resource_args(LB, props, stack="dev")) == []
    # On other stack names the environment tag decides (a stack "perf" configured as prod)...
    assert _violations(
        policy, _resource_args(LB, {**props, "tags": {"environment": "prod"}}, stack="perf")
    )
    # ...but a stack named prod is prod, whatever its tag says (settings refuse the mismatch).
    assert _violations(
        policy, _resource_args(LB, {**props, "tags": {"environment": "dev"}}, stack="prod")
    )
    assert (
        stack_of("urn:pulumi:acme-prod::liftoff::aws:lb/loadBalancer:LoadBalancer::alb")
        == "acme-prod"
    )
    assert environment_of("acme-prod") == "prod" and environment_of("sandbox") == "sandbox"


def test_pack_tags_rule_counts_provider_default_tags() -> None:
    policy = _policy("LIFTOFF_TAGS")
    args = ResourceValidationArgs(
        "aws:ec2/vpc:Vpc",
        unknown_checking_proxy({"cidrBlock": "10.0.0.0/16"}),
        "urn:pulumi:dev::liftoff::aws:ec2/vpc:Vpc::vpc",
        "vpc",
        _options(),
        _provider(
            "us-east-1", defaultTags='{"tags": {"project": "liftoff", "environment": "dev"}}'
        ),
    )
    assert _violations(policy, args) == []
    args.provider = _provider("us-east-1")
    [(message, _)] = _violations(policy, args)
    assert "lacks tags: project, environment" in message


def test_pack_unknown_values_during_preview_are_not_guessed() -> None:
    policy = _policy("CKV_AWS_58")
    args = _resource_args(CLUSTER, {"encryptionConfig": UNKNOWN_STRING_VALUE})
    with pytest.raises(UnknownValueError):  # the analyzer reports "can't run during preview"
        _violations(policy, args)


def _policy_resource(record: ResourceRecord, provider: PolicyProviderResource) -> PolicyResource:
    return PolicyResource(
        record.type,
        unknown_checking_proxy(dict(record.inputs)),
        record.urn,
        record.name,
        _options(),
        provider,
        None,
        [],
        {},
    )


def test_pack_stack_policy_traces_property_dependencies() -> None:
    provider = _provider("us-west-2")
    public = _policy_resource(PUBLIC_SUBNET, provider)
    private = _policy_resource(PRIVATE_SUBNET, provider)
    group = _policy_resource(
        rec("aws:eks/nodeGroup:NodeGroup", "nodes", subnetIds=["subnet-1"]), provider
    )
    policy = _policy("LIFTOFF_NODES_PRIVATE")

    group.property_dependencies = {"subnetIds": [public]}
    [(message, reported_urn)] = _violations(policy, StackValidationArgs([public, private, group]))
    assert "public subnets: public-0" in message and reported_urn == group.urn

    group.property_dependencies = {"subnetIds": [private]}
    assert _violations(policy, StackValidationArgs([public, private, group])) == []


def test_pack_stack_policy_reads_region_from_the_provider() -> None:
    policy = _policy("LIFTOFF_US_REGION")
    vpc = rec("aws:ec2/vpc:Vpc", "vpc")
    [(message, reported_urn)] = _violations(
        policy, StackValidationArgs([_policy_resource(vpc, _provider("eu-west-1"))])
    )
    assert "eu-west-1 is not a US region" in message and reported_urn is None
    assert (
        _violations(policy, StackValidationArgs([_policy_resource(vpc, _provider("us-east-2"))]))
        == []
    )


def test_pack_region_falls_back_to_the_environment_the_provider_reads(monkeypatch) -> None:
    policy = _policy("LIFTOFF_US_REGION")
    vpc = rec("aws:ec2/vpc:Vpc", "vpc")
    no_region = PolicyProviderResource(
        "pulumi:providers:aws", {}, "urn:pulumi:dev::liftoff::p::default", "default"
    )
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_REGION", "us-west-1")
    assert _violations(policy, StackValidationArgs([_policy_resource(vpc, no_region)])) == []
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    [(message, _)] = _violations(policy, StackValidationArgs([_policy_resource(vpc, no_region)]))
    assert "ap-south-1" in message


# --- the pack as Pulumi runs it: a process serving the Analyzer gRPC API -----------------------


@pytest.fixture(scope="module")
def analyzer() -> Iterator[analyzer_pb2_grpc.AnalyzerStub]:
    """`python infra/policy`, as `pulumi preview --policy-pack infra/policy` starts it; a client."""
    pack_dir = REPO / "infra" / "policy"
    process = subprocess.Popen(
        [sys.executable, "-u", str(pack_dir)],
        cwd=pack_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([process.stdout], [], [], 60)
        if not ready:
            pytest.fail("the policy pack did not print its gRPC port within 60 s")
        line = process.stdout.readline().strip()
        if not line.isdigit():
            process.kill()
            pytest.fail(f"the policy pack failed to start: {line!r} {process.stderr.read()}")
        channel = grpc.insecure_channel(f"127.0.0.1:{line}")
        yield analyzer_pb2_grpc.AnalyzerStub(channel)
        channel.close()
    finally:
        process.terminate()
        process.wait(timeout=10)


def _struct(value: dict) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(json.loads(json.dumps(value, default=str)))
    return struct


def _aws_provider(stack: str, region: str) -> analyzer_pb2.AnalyzerProviderResource:
    return analyzer_pb2.AnalyzerProviderResource(
        type="pulumi:providers:aws",
        properties=_struct({"region": region}),
        urn=f"urn:pulumi:{stack}::liftoff::pulumi:providers:aws::default",
        name="default",
    )


def _analyze_program(stub, stack: str, overrides: dict[str, str] | None = None) -> list:
    """Every resource the real program declares, through the pack's Analyze, as the engine would."""
    run = run_program(stack, overrides)
    assert run.settings is not None
    provider = _aws_provider(stack, run.settings.region)
    diagnostics = []
    for resource in run.resources:
        response = stub.Analyze(
            analyzer_pb2.AnalyzeRequest(
                type=resource.type,
                properties=_struct(resource.inputs),
                urn=resource.urn,
                name=resource.name,
                provider=provider,
            )
        )
        diagnostics.extend(response.diagnostics)
    return diagnostics


def test_served_pack_lists_every_rule_with_its_enforcement(analyzer) -> None:
    info = analyzer.GetAnalyzerInfo(empty_pb2.Empty())
    assert info.name == "liftoff"
    levels = {p.name: p.enforcementLevel for p in info.policies}
    assert list(levels) == [rule.id for rule in RULES]
    for rule in RULES:
        expected = analyzer_pb2.MANDATORY if rule.severity == "error" else analyzer_pb2.ADVISORY
        assert levels[rule.id] == expected, rule.id


def test_rule_reference_is_current_and_served_as_the_pack_readme(analyzer) -> None:
    readme = (REPO / "infra" / "policy" / "README.md").read_text()
    assert readme == rules_markdown(), (
        "regenerate: python -m infra.policies > infra/policy/README.md"
    )
    for rule in RULES:
        assert f"`{rule.id}`" in readme
    assert analyzer.GetAnalyzerInfo(empty_pb2.Empty()).readme == readme


def test_served_pack_flags_a_failing_resource(analyzer) -> None:
    response = analyzer.Analyze(
        analyzer_pb2.AnalyzeRequest(
            type=CLUSTER,
            properties=_struct({"name": "eks", "vpcConfig": {"publicAccessCidrs": ["0.0.0.0/0"]}}),
            urn=urn(CLUSTER, "eks").replace(":test::", ":prod::"),
            name="eks",
            provider=_aws_provider("prod", "us-west-2"),
        )
    )
    found = {(d.policyName, d.enforcementLevel) for d in response.diagnostics}
    assert ("CKV_AWS_58", analyzer_pb2.MANDATORY) in found
    assert ("CKV_AWS_37", analyzer_pb2.MANDATORY) in found
    assert ("CKV_AWS_38", analyzer_pb2.MANDATORY) in found  # prod stack, from the URN


def test_served_pack_passes_the_real_prod_stack_and_catches_a_broken_override(analyzer) -> None:
    mandatory = [
        d
        for d in _analyze_program(analyzer, "prod")
        if d.enforcementLevel == analyzer_pb2.MANDATORY
    ]
    assert mandatory == [], [(d.policyName, d.message) for d in mandatory]
    broken = _analyze_program(analyzer, "prod", {"liftoff:albDeletionProtection": "false"})
    assert [d.policyName for d in broken if d.enforcementLevel == analyzer_pb2.MANDATORY] == [
        "CKV_AWS_150"
    ]


PROD_CERTIFICATE = {
    "liftoff:certificateArn": (
        "arn:aws:acm:us-west-2:123456789012:certificate/0e3f2a4b-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
    )
}


def test_served_pack_stack_policies_over_the_real_program(analyzer) -> None:
    run = run_program("prod", PROD_CERTIFICATE)
    assert run.settings is not None
    ids = mock_resource_ids(run)
    provider = _aws_provider("prod", run.settings.region)

    def analyze_stack(resources: list) -> list:
        request = analyzer_pb2.AnalyzeStackRequest(
            resources=[
                analyzer_pb2.AnalyzerResource(
                    type=r.type,
                    # Stack policies see state: inputs plus the id the resource got.
                    properties=_struct(
                        {**r.inputs, **({"id": ids[r.urn]} if r.urn in ids else {})}
                    ),
                    urn=r.urn,
                    name=r.name,
                    provider=provider,
                    parent=r.parent_urn,
                )
                for r in resources
            ]
        )
        return [
            d
            for d in analyzer.AnalyzeStack(request).diagnostics
            if d.enforcementLevel == analyzer_pb2.MANDATORY
        ]

    assert analyze_stack(run.resources) == []
    # For a real preview plain HTTP in prod is an error (offline, in `make plan`, a warning).
    http_only = run_program("prod")
    assert [d.policyName for d in analyze_stack(http_only.resources)] == ["LIFTOFF_PROD_HTTPS"]
    without_budget = [r for r in run.resources if r.type != "aws:budgets/budget:Budget"]
    assert [d.policyName for d in analyze_stack(without_budget)] == ["LIFTOFF_BUDGET"]

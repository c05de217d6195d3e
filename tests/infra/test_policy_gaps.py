"""Day one on a real AWS account: the policy gaps closed, each with a failing and a passing case,
through `evaluate` and through the CrossGuard pack served as Pulumi runs it.

World ingress written as several CIDRs, a resource placed outside the US by its own `region`, a
node group without a launch template, an S3 bucket without a public access block, and prod-only
rules switched off by tagging the prod stack as dev.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from pulumi.runtime.proto import analyzer_pb2
from pulumi_policy import StackValidationArgs

from infra.address_space import PUBLIC_SPACE, public_gaps, world_open_versions
from infra.plan import build_plan
from infra.policies import ResourceRecord
from infra.settings import SettingsError, load_settings
from tests.infra import test_policies
from tests.infra.test_policies import (
    ALL_BLOCKED,
    BUCKET,
    BUCKET_PAB,
    CLUSTER,
    DEV,
    FORWARD,
    LB,
    LISTENER,
    NODE_GROUP,
    PROD,
    SECURE_CLUSTER,
    SECURE_LB,
    SG,
    _aws_provider,
    _policy,
    _policy_resource,
    _provider,
    _resource_args,
    _struct,
    _violations,
    findings,
    rec,
    urn,
)

# The served pack (`python infra/policy` answering Analyzer gRPC calls), one process per module.
analyzer = test_policies.analyzer

INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
SG_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
PREFIX_LIST = "aws:ec2/managedPrefixList:ManagedPrefixList"
PREFIX_LIST_ENTRY = "aws:ec2/managedPrefixListEntry:ManagedPrefixListEntry"
ACCOUNT_PAB = "aws:s3/accountPublicAccessBlock:AccountPublicAccessBlock"

HALVES = ["0.0.0.0/1", "128.0.0.0/1"]
IPV6_HALVES = ["::/1", "8000::/1"]
# Every /8 but "this network", 10/8 (RFC 1918) and loopback: all the public IPv4 space.
PUBLIC_EIGHTS = [f"{first}.0.0.0/8" for first in range(256) if first not in (0, 10, 127)]
# The same, with 8.8.8.0/24 (a public /24) left out: 8.0.0.0/8 written as the rest of it.
NEAR_MISS = [c for c in PUBLIC_EIGHTS if c != "8.0.0.0/8"] + [
    str(net)
    for net in ipaddress.IPv4Network("8.0.0.0/8").address_exclude(
        ipaddress.IPv4Network("8.8.8.0/24")
    )
]


def group(name: str, *blocks: dict) -> ResourceRecord:
    """A security group with inline ingress `blocks`."""
    return rec(SG, name, ingress=list(blocks))


def tcp(port: int | tuple[int, int], *cidrs: str) -> dict:
    """An inline ingress block for a TCP port (or range) from IPv4 and IPv6 `cidrs`."""
    low, high = port if isinstance(port, tuple) else (port, port)
    v4 = [c for c in cidrs if ":" not in c]
    v6 = [c for c in cidrs if ":" in c]
    return {"protocol": "tcp", "fromPort": low, "toPort": high, "cidrBlocks": v4} | (
        {"ipv6CidrBlocks": v6} if v6 else {}
    )


def ingress_rule(
    name: str, group_: ResourceRecord, port: int, deps: dict | None = None, **inputs: Any
) -> ResourceRecord:
    """A SecurityGroupIngressRule on `group_`, traced through its property dependencies."""
    return rec(
        INGRESS_RULE,
        name,
        deps={"securityGroupId": [group_.urn], **(deps or {})},
        securityGroupId="sg-unknown-at-preview",
        ipProtocol="tcp",
        fromPort=port,
        toPort=port,
        **inputs,
    )


def world_findings(resources: list[ResourceRecord]) -> list[str]:
    return [f.message for f in findings("CKV_AWS_260", resources, DEV)]


# --- the public address space ------------------------------------------------------------


def test_public_space_excludes_exactly_the_non_public_ranges() -> None:
    public = PUBLIC_SPACE[4]
    for address in ("8.8.8.8", "1.1.1.1", "100.63.255.255", "100.128.0.0", "223.255.255.255"):
        assert any(ipaddress.ip_address(address) in net for net in public), address
    for address in (
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "127.0.0.1",
        "169.254.169.254",
        "224.0.0.1",
        "240.0.0.1",
        "203.0.113.7",
        "0.1.2.3",
    ):
        assert not any(ipaddress.ip_address(address) in net for net in public), address
    assert any(ipaddress.ip_address("2600:1f18::1") in net for net in PUBLIC_SPACE[6])
    for address in ("fd00::1", "fe80::1", "::1", "ff02::1", "2001:db8::1"):
        assert not any(ipaddress.ip_address(address) in net for net in PUBLIC_SPACE[6]), address


@pytest.mark.parametrize(
    ("cidrs", "versions"),
    [
        (["0.0.0.0/0"], (4,)),
        (HALVES, (4,)),
        (IPV6_HALVES, (6,)),
        (["2000::/4", "3000::/4"], (6,)),  # together 2000::/3, all IPv6 global unicast
        (PUBLIC_EIGHTS, (4,)),
        ([*HALVES, *IPV6_HALVES], (4, 6)),
        (NEAR_MISS, ()),
        (["0.0.0.0/1"], ()),
        (["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"], ()),
        (["2000::/4"], ()),
        (["not-a-cidr", None], ()),
    ],
)
def test_world_open_versions(cidrs: list, versions: tuple[int, ...]) -> None:
    assert world_open_versions(cidrs) == versions


def test_a_near_miss_leaves_exactly_the_public_24_out() -> None:
    assert public_gaps(NEAR_MISS, 4) == [ipaddress.IPv4Network("8.8.8.0/24")]


# --- world ingress as several CIDRs ------------------------------------------------------


def test_two_halves_in_one_block_open_ssh_to_the_world() -> None:
    [message] = world_findings([group("admin", tcp(22, *HALVES))])
    assert "SecurityGroup 'admin' opens tcp 22-22 to 0.0.0.0/1, 128.0.0.0/1" in message
    assert "cover every public address" in message
    assert world_findings([group("admin", tcp(22, "0.0.0.0/1"))]) == []


def test_ipv6_halves_are_the_world_too() -> None:
    [message] = world_findings([group("admin", tcp(22, *IPV6_HALVES))])
    assert "::/1, 8000::/1" in message
    # ::/1 alone holds all of 2000::/3, the global unicast space.
    [message] = world_findings([group("admin", tcp(22, "::/1"))])
    assert "to ::/1, which covers every public address" in message
    assert world_findings([group("admin", tcp(22, "2000::/4"))]) == []


def test_public_eights_are_the_world_and_a_near_miss_is_not() -> None:
    assert world_findings([group("admin", tcp(5432, *PUBLIC_EIGHTS))])
    assert world_findings([group("admin", tcp(5432, *NEAR_MISS))]) == []


def test_private_ranges_together_are_not_the_world() -> None:
    private = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"]
    assert world_findings([group("nodes", tcp((0, 65535), *private))]) == []


def test_the_union_spans_rules_of_one_group() -> None:
    sg = group("cache")
    halves = [ingress_rule(f"half-{i}", sg, 6379, cidrIpv4=c) for i, c in enumerate(HALVES)]
    [message] = world_findings([sg, *halves])
    # Reported on the group, naming both rules.
    assert message.startswith("SecurityGroup 'cache' opens tcp 6379-6379")
    assert "SecurityGroupIngressRule 'half-0'" in message
    assert "SecurityGroupIngressRule 'half-1'" in message
    # The same halves on two different groups open neither to the world.
    other = group("other")
    split = [
        ingress_rule("half-0", sg, 6379, cidrIpv4=HALVES[0]),
        ingress_rule("half-1", other, 6379, cidrIpv4=HALVES[1]),
    ]
    assert world_findings([sg, other, *split]) == []


def test_rules_on_one_group_id_are_united_when_the_group_is_not_in_the_stack() -> None:
    halves = [
        rec(
            SG_RULE,
            f"half-{i}",
            type="ingress",
            securityGroupId="sg-0abc",
            protocol="tcp",
            fromPort=22,
            toPort=22,
            cidrBlocks=[c],
        )
        for i, c in enumerate(HALVES)
    ]
    assert world_findings(halves)
    assert world_findings(halves[:1]) == []


def test_only_the_ports_both_halves_span_are_world_open() -> None:
    overlapping = group("app", tcp((0, 1000), HALVES[0]), tcp((500, 2000), HALVES[1]))
    [message] = world_findings([overlapping])
    assert "opens tcp 500-1000 to" in message
    disjoint = group("app", tcp((0, 499), HALVES[0]), tcp((500, 2000), HALVES[1]))
    assert world_findings([disjoint]) == []


def test_an_all_protocols_rule_counts_for_each_protocol() -> None:
    everything = {"protocol": "-1", "fromPort": 0, "toPort": 0, "cidrBlocks": [HALVES[0]]}
    [message] = world_findings([group("app", everything, tcp(22, HALVES[1]))])
    assert "opens tcp 22-22 to" in message
    both = {**everything, "cidrBlocks": HALVES}
    [message] = world_findings([group("app", both, tcp(22, HALVES[1]))])
    assert "opens -1 0-65535 to" in message  # reported once, as all protocols


def test_web_ports_split_in_halves_pass_only_on_the_load_balancer_group() -> None:
    alb_sg = group("alb-sg", tcp(443, *HALVES))
    lb = rec(LB, "alb", deps={"securityGroups": [alb_sg.urn]}, securityGroups=["sg-1"], **SECURE_LB)
    assert world_findings([alb_sg, lb]) == []
    nodes = group("nodes", tcp(443, *HALVES))
    [message] = world_findings([alb_sg, nodes, lb])
    assert "SecurityGroup 'nodes'" in message and "no load balancer uses" in message


def test_a_prefix_list_of_the_stack_counts_by_its_entries() -> None:
    sg = group("alb-sg")
    world_list = rec(PREFIX_LIST, "clients", id="pl-1", entries=[{"cidr": c} for c in HALVES])
    office_list = rec(PREFIX_LIST, "clients", id="pl-1", entries=[{"cidr": "198.51.100.0/24"}])
    traced = ingress_rule(
        "ssh-clients", sg, 22, deps={"prefixListId": [world_list.urn]}, prefixListId="pl-1"
    )
    [message] = world_findings([sg, world_list, traced])
    assert "0.0.0.0/1, 128.0.0.0/1" in message
    assert world_findings([sg, office_list, traced]) == []
    # Inline blocks and SecurityGroupRules name lists by id (prefixListIds).
    inline = group(
        "admin", {"protocol": "tcp", "fromPort": 22, "toPort": 22, "prefixListIds": ["pl-1"]}
    )
    assert world_findings([inline, world_list])
    assert world_findings([inline, office_list]) == []
    sg_rule = rec(
        SG_RULE,
        "ssh",
        type="ingress",
        protocol="tcp",
        fromPort=22,
        toPort=22,
        prefixListIds=["pl-1"],
    )
    assert world_findings([sg_rule, world_list])
    assert world_findings([sg_rule, office_list]) == []


def test_prefix_list_entry_resources_count_too() -> None:
    plist = rec(PREFIX_LIST, "clients", id="pl-2")
    entries = [
        rec(PREFIX_LIST_ENTRY, f"e{i}", prefixListId="pl-2", cidr=c) for i, c in enumerate(HALVES)
    ]
    inline = group(
        "admin", {"protocol": "tcp", "fromPort": 22, "toPort": 22, "prefixListIds": ["pl-2"]}
    )
    assert world_findings([inline, plist, *entries])
    assert world_findings([inline, plist, entries[0]]) == []


def test_eks_allowlist_covering_the_internet_is_no_allowlist() -> None:
    open_in_halves = rec(
        CLUSTER,
        "eks",
        vpcConfig={"endpointPublicAccess": True, "publicAccessCidrs": HALVES},
    )
    [finding] = findings("CKV_AWS_38", [open_in_halves], PROD)
    assert "whole internet" in finding.message
    assert findings("CKV_AWS_38", [rec(CLUSTER, "eks", **SECURE_CLUSTER)], PROD) == []


# --- a resource's own region -------------------------------------------------------------


def test_a_resource_or_provider_outside_the_us_is_an_error() -> None:
    provider = rec("pulumi:providers:aws", "eu", region="eu-central-1")
    [bucket_finding, provider_finding] = findings(
        "LIFTOFF_RESOURCE_US_REGION", [rec(BUCKET, "logs", region="ap-south-1"), provider], DEV
    )
    assert "Bucket 'logs' is placed in ap-south-1" in bucket_finding.message
    assert "aws 'eu' is placed in eu-central-1" in provider_finding.message
    passing = [
        rec(BUCKET, "logs", region="us-east-2"),
        rec("pulumi:providers:aws", "us", region="us-west-2"),
        rec("kubernetes:core/v1:ConfigMap", "cm", region="eu-west-1"),  # not an AWS region input
    ]
    assert findings("LIFTOFF_RESOURCE_US_REGION", passing, DEV) == []


# --- node groups without a launch template -----------------------------------------------


def test_a_node_group_needs_a_launch_template() -> None:
    [finding] = findings("LIFTOFF_NODES_LAUNCH_TEMPLATE", [rec(NODE_GROUP, "nodes")], DEV)
    assert "NodeGroup 'nodes' has no launch template" in finding.message
    by_name = rec(NODE_GROUP, "nodes", launchTemplate={"name": "nodes-lt", "version": "$Latest"})
    assert findings("LIFTOFF_NODES_LAUNCH_TEMPLATE", [by_name], DEV) == []


# --- S3 public access blocks -------------------------------------------------------------


def s3_findings(resources: list[ResourceRecord]) -> list[str]:
    return [f.message for f in findings("CKV2_AWS_6", resources, DEV)]


def test_every_bucket_needs_its_own_public_access_block() -> None:
    bucket = rec(BUCKET, "logs")
    block = rec(BUCKET_PAB, "private", deps={"bucket": [bucket.urn]}, **ALL_BLOCKED)
    assert s3_findings([bucket, block]) == []
    assert s3_findings([bucket]) == [
        "Bucket 'logs' has no public access block. Fix: add an aws.s3.BucketPublicAccessBlock for "
        "the bucket with blockPublicAcls, blockPublicPolicy, ignorePublicAcls and "
        "restrictPublicBuckets true."
    ]
    # A block for another bucket does not count; one matched by the bucket's name does.
    other = rec(BUCKET_PAB, "private", bucket="someone-elses", **ALL_BLOCKED)
    assert s3_findings([bucket, other])
    named = rec(BUCKET, "logs", bucket="acme-logs")
    assert s3_findings([named, rec(BUCKET_PAB, "private", bucket="acme-logs", **ALL_BLOCKED)]) == []
    v2 = rec("aws:s3/bucketV2:BucketV2", "old")
    assert s3_findings([v2]) == ["BucketV2 'old' has no public access block." + s3_fix()]


def s3_fix() -> str:
    return (
        " Fix: add an aws.s3.BucketPublicAccessBlock for the bucket with blockPublicAcls, "
        "blockPublicPolicy, ignorePublicAcls and restrictPublicBuckets true."
    )


def test_a_public_access_block_needs_all_four_settings_on() -> None:
    bucket = rec(BUCKET, "logs", id="logs-1")
    partial = rec(
        BUCKET_PAB, "private", bucket="logs-1", **{**ALL_BLOCKED, "blockPublicPolicy": False}
    )
    [message] = s3_findings([bucket, partial])
    assert "public access block with blockPublicPolicy off" in message


def test_an_account_wide_block_covers_every_bucket() -> None:
    bucket = rec(BUCKET, "logs")
    assert s3_findings([bucket, rec(ACCOUNT_PAB, "account", **ALL_BLOCKED)]) == []
    half_on = rec(ACCOUNT_PAB, "account", blockPublicAcls=True, ignorePublicAcls=True)
    assert s3_findings([bucket, half_on])


# --- the environment of a stack named dev, staging or prod -------------------------------


def test_settings_refuse_an_environment_other_than_the_stack_name() -> None:
    with pytest.raises(SettingsError) as excinfo:
        load_settings({"liftoff:environment": "dev"}, "prod")
    assert "liftoff:environment = dev: must equal the stack name (prod)" in str(excinfo.value)
    with pytest.raises(SettingsError, match=r"liftoff:environment = prod: .* \(staging\)"):
        load_settings({"liftoff:environment": "prod"}, "staging")
    assert load_settings({"liftoff:environment": "prod"}, "prod").environment == "prod"
    # Other stack names choose their environment freely.
    assert load_settings({"liftoff:environment": "prod"}, "perf").environment == "prod"
    assert load_settings({"liftoff:environment": "dev"}, "acme-prod").environment == "dev"


def test_the_plan_refuses_a_prod_stack_set_to_dev_before_any_resource() -> None:
    with pytest.raises(SettingsError, match=r"must equal the stack name \(prod\)"):
        build_plan("prod", {"liftoff:environment": "dev"})


def test_pack_stack_policy_takes_prod_from_the_stack_name_over_a_dev_tag() -> None:
    policy = _policy("LIFTOFF_PROD_HTTPS")
    http = rec(LISTENER, "http", **FORWARD, tags={"environment": "dev"})

    def on_stack(stack: str) -> list:
        resource = _policy_resource(http, _provider())
        resource.urn = resource.urn.replace(":test::", f":{stack}::")
        return _violations(policy, StackValidationArgs([resource]))

    [(message, _)] = on_stack("prod")
    assert "plain HTTP only" in message
    assert on_stack("perf") == []  # another name: the dev tag decides


# --- through the served pack -------------------------------------------------------------


def _analyze(stub, type_: str, props: dict, stack: str = "prod") -> set[str]:
    response = stub.Analyze(
        analyzer_pb2.AnalyzeRequest(
            type=type_,
            properties=_struct(props),
            urn=urn(type_, "thing").replace(":test::", f":{stack}::"),
            name="thing",
            provider=_aws_provider(stack, "us-west-2"),
        )
    )
    return {
        d.policyName for d in response.diagnostics if d.enforcementLevel == analyzer_pb2.MANDATORY
    }


def _analyze_stack(stub, resources: list[ResourceRecord], policy: str) -> list[str]:
    """Mandatory findings of `policy` over `resources` as the prod stack (with dependencies)."""
    request = analyzer_pb2.AnalyzeStackRequest(
        resources=[
            analyzer_pb2.AnalyzerResource(
                type=r.type,
                properties=_struct({**r.inputs, **({"id": r.id} if r.id else {})}),
                urn=r.urn.replace(":test::", ":prod::"),
                name=r.name,
                provider=_aws_provider("prod", "us-west-2"),
                propertyDependencies={
                    prop: analyzer_pb2.AnalyzerPropertyDependencies(
                        urns=[u.replace(":test::", ":prod::") for u in urns]
                    )
                    for prop, urns in r.property_dependencies.items()
                },
            )
            for r in resources
        ]
    )
    return [
        d.message
        for d in stub.AnalyzeStack(request).diagnostics
        if d.enforcementLevel == analyzer_pb2.MANDATORY and d.policyName == policy
    ]


def test_served_pack_flags_a_node_group_without_launch_template(analyzer) -> None:
    assert "LIFTOFF_NODES_LAUNCH_TEMPLATE" in _analyze(analyzer, NODE_GROUP, {"subnetIds": []})
    with_template = {"launchTemplate": {"id": "lt-1", "version": "3"}}
    assert "LIFTOFF_NODES_LAUNCH_TEMPLATE" not in _analyze(analyzer, NODE_GROUP, with_template)


def test_served_pack_flags_a_resource_region_outside_the_us(analyzer) -> None:
    tags = {"project": "liftoff", "environment": "prod"}
    assert "LIFTOFF_RESOURCE_US_REGION" in _analyze(
        analyzer, BUCKET, {"region": "eu-west-1", "tags": tags}
    )
    assert _analyze(analyzer, BUCKET, {"region": "us-east-1", "tags": tags}) == set()


def test_served_pack_keeps_prod_rules_on_a_prod_stack_tagged_dev(analyzer) -> None:
    props = {**SECURE_LB, "enableDeletionProtection": False, "tags": {"environment": "dev"}}
    assert "CKV_AWS_150" in _analyze(analyzer, LB, props, stack="prod")
    assert "CKV_AWS_150" not in _analyze(analyzer, LB, props, stack="perf")


def test_served_pack_flags_world_ingress_in_halves(analyzer) -> None:
    sg = group("cache")
    halves = [ingress_rule(f"half-{i}", sg, 6379, cidrIpv4=c) for i, c in enumerate(HALVES)]
    [message] = _analyze_stack(analyzer, [sg, *halves], "CKV_AWS_260")
    assert "SecurityGroup 'cache'" in message and "cover every public address" in message
    assert _analyze_stack(analyzer, [sg, halves[0]], "CKV_AWS_260") == []


def test_served_pack_flags_a_bucket_without_public_access_block(analyzer) -> None:
    bucket = rec(BUCKET, "logs")
    block = rec(BUCKET_PAB, "private", deps={"bucket": [bucket.urn]}, **ALL_BLOCKED)
    [message] = _analyze_stack(analyzer, [bucket], "CKV2_AWS_6")
    assert "Bucket 'logs' has no public access block" in message
    assert _analyze_stack(analyzer, [bucket, block], "CKV2_AWS_6") == []


def test_pack_context_for_a_resource_rule_uses_the_stack_name() -> None:
    policy = _policy("CKV_AWS_91")
    props = {**SECURE_LB, "accessLogs": {}, "tags": {"environment": "staging"}}
    assert _violations(policy, _resource_args(LB, props, stack="prod"))
    assert _violations(policy, _resource_args(LB, props, stack="staging")) == []

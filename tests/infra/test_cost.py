"""The cost model over resource records: hourly x 730, nodes at desired size with a min..max range,
region-specific prices, an explicit "no price" line for unknown types, and a complete price file."""

from __future__ import annotations

import re

import pytest

from infra.cost import CostEstimate, CostItem, default_prices, estimate
from infra.policies import ResourceRecord

HOURS = 730
PRICES = default_prices()
EAST = PRICES.regions["us-east-1"]


def rec(type_: str, name: str, **inputs: object) -> ResourceRecord:
    return ResourceRecord(type_, name, inputs, urn=f"urn:pulumi:t::liftoff::{type_}::{name}")


def stack(
    instance_type: str = "m7i.large", desired: int = 3, node_type: str = "cache.r7g.large"
) -> list[ResourceRecord]:
    return [
        rec("aws:eks/cluster:Cluster", "eks"),
        rec(
            "aws:eks/nodeGroup:NodeGroup",
            "nodes",
            instanceTypes=[instance_type, "m6i.large"],
            scalingConfig={"minSize": 2, "desiredSize": desired, "maxSize": 6},
        ),
        rec(
            "aws:ec2/launchTemplate:LaunchTemplate",
            "nodes-lt",
            blockDeviceMappings=[
                {"deviceName": "/dev/xvda", "ebs": {"volumeSize": 100, "encrypted": "true"}}
            ],
        ),
        rec("aws:ec2/natGateway:NatGateway", "nat-0"),
        rec("aws:ec2/eip:Eip", "nat-eip-0"),
        rec("aws:lb/loadBalancer:LoadBalancer", "alb", loadBalancerType="application"),
        rec(
            "aws:elasticache/replicationGroup:ReplicationGroup",
            "cache",
            engine="redis",
            nodeType=node_type,
            numCacheClusters=2,
        ),
        rec("aws:kms/key:Key", "key"),
        rec("aws:secretsmanager/secret:Secret", "llm-key"),
        rec("aws:secretsmanager/secret:Secret", "redis-token"),
        rec("aws:cloudwatch/metricAlarm:MetricAlarm", "alb-5xx"),
        rec(
            "aws:ec2/vpcEndpoint:VpcEndpoint",
            "sts",
            vpcEndpointType="Interface",
            serviceName="com.amazonaws.us-east-1.sts",
            subnetIds=["subnet-a", "subnet-b", "subnet-c"],
        ),
        rec("aws:ec2/vpcEndpoint:VpcEndpoint", "s3", vpcEndpointType="Gateway"),
        rec("aws:ec2/vpc:Vpc", "vpc"),  # free: no line
    ]


def item(result: CostEstimate, resource: str, contains: str = "") -> CostItem:
    return next(i for i in result.items if i.resource == resource and contains in i.description)


def test_each_priced_resource_is_hourly_times_730_or_monthly() -> None:
    result = estimate(stack(), "us-east-1")
    assert item(result, "eks").monthly_usd == pytest.approx(
        EAST["eks_cluster_hourly"] * HOURS, abs=0.01
    )
    assert item(result, "nat-0").monthly_usd == pytest.approx(
        EAST["nat_gateway_hourly"] * HOURS, abs=0.01
    )
    assert item(result, "nat-eip-0").monthly_usd == pytest.approx(
        EAST["public_ipv4_hourly"] * HOURS, abs=0.01
    )
    alb = (EAST["alb_hourly"] + EAST["alb_lcu_hourly"] * PRICES.alb_nominal_lcu) * HOURS
    assert item(result, "alb").monthly_usd == pytest.approx(alb, abs=0.01)
    cache = EAST["elasticache_hourly"]["cache.r7g.large"] * HOURS * 2
    assert item(result, "cache").monthly_usd == pytest.approx(cache, abs=0.01)
    assert item(result, "key").monthly_usd == EAST["kms_key_monthly"]
    assert item(result, "llm-key").monthly_usd == EAST["secrets_manager_secret_monthly"]
    assert item(result, "alb-5xx").monthly_usd == EAST["cloudwatch_alarm_monthly"]
    sts = item(result, "sts")
    assert sts.description == "VPC interface endpoint sts x 3 AZ"
    assert sts.monthly_usd == pytest.approx(
        EAST["vpc_interface_endpoint_hourly_per_az"] * HOURS * 3, abs=0.01
    )
    assert not [
        i for i in result.items if i.resource in ("s3", "vpc")
    ]  # gateway endpoint, VPC: free
    assert result.monthly_usd == pytest.approx(sum(i.monthly_usd for i in result.items), abs=0.01)
    assert result.unpriced == []


def test_nodes_are_priced_at_desired_size_with_min_max_range() -> None:
    result = estimate(stack(desired=3), "us-east-1")
    nodes = item(result, "nodes", "nodes")
    per_node = EAST["ec2_hourly"]["m7i.large"] * HOURS
    assert nodes.monthly_usd == pytest.approx(per_node * 3, abs=0.01)
    assert nodes.range_usd == pytest.approx((per_node * 2, per_node * 6), abs=0.01)
    assert nodes.description == "3 x m7i.large nodes (min 2..max 6)"
    volumes = item(result, "nodes", "gp3")
    assert volumes.monthly_usd == pytest.approx(EAST["ebs_gp3_gb_month"] * 100 * 3, abs=0.01)
    low, high = result.range_usd
    assert low < result.monthly_usd < high
    bigger = estimate(stack(desired=5), "us-east-1")
    assert bigger.monthly_usd - result.monthly_usd == pytest.approx(
        2 * (per_node + EAST["ebs_gp3_gb_month"] * 100), abs=0.02
    )


def test_region_changes_prices() -> None:
    east, west1 = estimate(stack(), "us-east-1"), estimate(stack(), "us-west-1")
    assert west1.monthly_usd > east.monthly_usd
    assert item(west1, "nat-0").monthly_usd > item(east, "nat-0").monthly_usd
    assert item(west1, "nodes", "nodes").monthly_usd > item(east, "nodes", "nodes").monthly_usd


def test_unknown_type_gets_a_no_price_line_not_a_silent_zero() -> None:
    result = estimate(stack(instance_type="x9z.huge", node_type="cache.x9.large"), "us-east-1")
    nodes, cache = item(result, "nodes", "no price"), item(result, "cache")
    assert nodes.monthly_usd is None and cache.monthly_usd is None
    assert nodes.description == (
        "no price for EC2 instance type x9z.huge in us-east-1 (add it to infra/data/prices.json)"
    )
    assert "cache.x9.large" in cache.description
    assert {i.resource for i in result.unpriced} == {"nodes", "cache"}
    priced = estimate(stack(), "us-east-1")
    # The unpriced lines drop out of the total instead of counting as 0 silently.
    assert result.monthly_usd == pytest.approx(
        priced.monthly_usd
        - item(priced, "nodes", "nodes").monthly_usd
        - item(priced, "cache").monthly_usd,
        abs=0.02,
    )


def test_unknown_region_says_so() -> None:
    result = estimate(stack(), "eu-west-1")
    assert result.notes and "eu-west-1" in result.notes[0]
    assert result.items and all(i.monthly_usd is None for i in result.items)


def test_valkey_is_priced_below_redis() -> None:
    records = stack()
    valkey = [
        rec(r.type, r.name, **{**r.inputs, "engine": "valkey"}) if r.name == "cache" else r
        for r in records
    ]
    redis_cache = item(estimate(records, "us-east-1"), "cache").monthly_usd
    valkey_cache = item(estimate(valkey, "us-east-1"), "cache")
    assert valkey_cache.monthly_usd == pytest.approx(
        redis_cache * (1 - PRICES.engine_discount["valkey"]), abs=0.01
    )
    assert "valkey" in valkey_cache.description


def test_price_file_covers_every_us_region_and_offered_type() -> None:
    assert PRICES.source and re.match(r"^\d{4}-\d{2}-\d{2}$", PRICES.as_of)
    assert PRICES.hours_per_month == HOURS
    assert set(PRICES.regions) == {"us-east-1", "us-east-2", "us-west-1", "us-west-2"}
    keys = set(EAST)
    families = ("t3.", "t3a.", "m6i.", "m7i.", "m7g.", "c7i.", "r7i.")
    for region, sheet in PRICES.regions.items():
        assert set(sheet) == keys, region
        ec2 = sheet["ec2_hourly"]
        for family in families:
            assert any(t.startswith(family) for t in ec2), (region, family)
        for family in ("cache.t4g.", "cache.m7g.", "cache.r7g."):
            assert any(t.startswith(family) for t in sheet["elasticache_hourly"]), (region, family)
        numbers = [v for v in sheet.values() if isinstance(v, float | int)]
        numbers += [*ec2.values(), *sheet["elasticache_hourly"].values()]
        assert all(v > 0 for v in numbers), region
        # Within a family a size up costs twice as much (AWS's linear size pricing).
        assert ec2["m7i.xlarge"] == pytest.approx(2 * ec2["m7i.large"], rel=0.01)

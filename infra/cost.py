"""Monthly cost estimate of a stack's resources from the on-demand price table in data/prices.json.

monthly = hourly x 730. Node groups are priced at their desired size, with the min..max range
shown. A resource whose type or size has no price gets a line saying so (monthly_usd None), never a
silent 0. Usage-based charges (data transfer, NAT processing, log ingestion, ...) are excluded and
named in `CostEstimate.excluded`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any

from infra import eks_versions
from infra.policies import (
    EKS_CLUSTER,
    EKS_NODE_GROUP,
    KMS_KEY,
    LAUNCH_TEMPLATE,
    LOAD_BALANCERS,
    REPLICATION_GROUP,
    SECRET,
    ResourceRecord,
    StackView,
)

PRICES_PATH = Path(__file__).with_name("data") / "prices.json"

NAT_GATEWAY = "aws:ec2/natGateway:NatGateway"
ELASTIC_IP = "aws:ec2/eip:Eip"
VPC_ENDPOINT = "aws:ec2/vpcEndpoint:VpcEndpoint"
METRIC_ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
WEB_ACL = "aws:wafv2/webAcl:WebAcl"


@dataclass(frozen=True)
class PriceTable:
    """The price file: per-region price sheets plus where the numbers come from."""

    source: str
    as_of: str
    hours_per_month: float
    alb_nominal_lcu: float
    engine_discount: Mapping[str, float]
    excluded: str
    regions: Mapping[str, Mapping[str, Any]]

    @classmethod
    def load(cls, path: Path = PRICES_PATH) -> PriceTable:
        data = json.loads(path.read_text())
        return cls(
            source=data["source"],
            as_of=data["as_of"],
            hours_per_month=float(data["hours_per_month"]),
            alb_nominal_lcu=float(data["alb_nominal_lcu"]),
            engine_discount=data["elasticache_engine_discount"],
            excluded=data["excluded"],
            regions=data["regions"],
        )


@lru_cache(maxsize=1)
def default_prices() -> PriceTable:
    return PriceTable.load()


@dataclass(frozen=True)
class CostItem:
    """One line of the estimate; monthly_usd None means "no price known" (see description)."""

    resource: str
    resource_type: str
    description: str
    monthly_usd: float | None
    range_usd: tuple[float, float] | None = None  # node groups: cost at min..max size


@dataclass(frozen=True)
class CostEstimate:
    region: str
    items: tuple[CostItem, ...]
    source: str
    as_of: str
    excluded: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def monthly_usd(self) -> float:
        """Sum of priced lines (unpriced lines are listed in `unpriced`)."""
        return round(sum(i.monthly_usd for i in self.items if i.monthly_usd is not None), 2)

    @property
    def unpriced(self) -> list[CostItem]:
        return [i for i in self.items if i.monthly_usd is None]

    @property
    def range_usd(self) -> tuple[float, float]:
        """Total with node groups at their min and max size."""
        low = high = 0.0
        for item in self.items:
            if item.monthly_usd is None:
                continue
            item_low, item_high = item.range_usd or (item.monthly_usd, item.monthly_usd)
            low, high = low + item_low, high + item_high
        return round(low, 2), round(high, 2)


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _list(value: Any) -> list[Any]:
    if value is None or isinstance(value, str | Mapping):
        return [] if value is None else [value]
    return list(value) if isinstance(value, Sequence) else [value]


class _Pricer:
    """Prices one stack's resources in one region."""

    def __init__(self, view: StackView, region: str, prices: PriceTable, on: date) -> None:
        self.view = view
        self.region = region
        self.prices = prices
        self.on = on  # the day whose EKS support status prices the control plane
        self.sheet: Mapping[str, Any] = prices.regions.get(region, {})
        self.hours = prices.hours_per_month

    def monthly(self, hourly: float, count: float = 1) -> float:
        return round(hourly * self.hours * count, 2)

    def no_price(self, resource: ResourceRecord, what: str) -> CostItem:
        return CostItem(
            resource.name,
            resource.type,
            f"no price for {what} in {self.region} (add it to infra/data/prices.json)",
            None,
        )

    def items(self) -> Iterator[CostItem]:
        handlers = {
            EKS_CLUSTER: self.eks_cluster,
            EKS_NODE_GROUP: self.node_group,
            NAT_GATEWAY: self.nat_gateway,
            ELASTIC_IP: self.elastic_ip,
            VPC_ENDPOINT: self.vpc_endpoint,
            REPLICATION_GROUP: self.cache,
            KMS_KEY: self.fixed("kms_key_monthly", "customer-managed KMS key"),
            SECRET: self.fixed("secrets_manager_secret_monthly", "Secrets Manager secret"),
            METRIC_ALARM: self.fixed("cloudwatch_alarm_monthly", "CloudWatch alarm (standard)"),
            WEB_ACL: self.web_acl,
            **{t: self.load_balancer for t in LOAD_BALANCERS},
        }
        for resource in self.view.resources:
            handler = handlers.get(resource.type)
            if handler is not None:
                yield from handler(resource)

    def fixed(
        self, price_key: str, description: str
    ) -> Callable[[ResourceRecord], Iterator[CostItem]]:
        def price(resource: ResourceRecord) -> Iterator[CostItem]:
            monthly = self.sheet.get(price_key)
            if monthly is None:
                yield self.no_price(resource, description)
                return
            yield CostItem(resource.name, resource.type, description, round(float(monthly), 2))

        return price

    def hourly_item(self, resource: ResourceRecord, price_key: str, description: str) -> CostItem:
        hourly = self.sheet.get(price_key)
        if hourly is None:
            return self.no_price(resource, description)
        return CostItem(resource.name, resource.type, description, self.monthly(float(hourly)))

    def eks_cluster(self, resource: ResourceRecord) -> Iterator[CostItem]:
        version = str(resource.inputs.get("version") or "")
        if eks_versions.in_extended_support(version, self.on):
            yield self.hourly_item(
                resource,
                "eks_cluster_extended_hourly",
                f"EKS control plane ({version} in extended support)",
            )
            return
        yield self.hourly_item(resource, "eks_cluster_hourly", "EKS control plane")

    def nat_gateway(self, resource: ResourceRecord) -> Iterator[CostItem]:
        yield self.hourly_item(
            resource, "nat_gateway_hourly", "NAT gateway (hourly; data processing excluded)"
        )

    def elastic_ip(self, resource: ResourceRecord) -> Iterator[CostItem]:
        yield self.hourly_item(resource, "public_ipv4_hourly", "public IPv4 address")

    def vpc_endpoint(self, resource: ResourceRecord) -> Iterator[CostItem]:
        if resource.inputs.get("vpcEndpointType", "Gateway") != "Interface":
            return  # gateway endpoints (S3, DynamoDB) are free
        service = str(resource.inputs.get("serviceName", "")).removeprefix(
            f"com.amazonaws.{self.region}."
        )
        azs = max(1, len(_list(resource.inputs.get("subnetIds"))))
        hourly = self.sheet.get("vpc_interface_endpoint_hourly_per_az")
        if hourly is None:
            yield self.no_price(resource, "VPC interface endpoint")
            return
        yield CostItem(
            resource.name,
            resource.type,
            f"VPC interface endpoint {service} x {azs} AZ",
            self.monthly(float(hourly), azs),
        )

    def load_balancer(self, resource: ResourceRecord) -> Iterator[CostItem]:
        hourly, lcu = self.sheet.get("alb_hourly"), self.sheet.get("alb_lcu_hourly")
        if hourly is None or lcu is None:
            yield self.no_price(resource, "application load balancer")
            return
        lcus = self.prices.alb_nominal_lcu
        yield CostItem(
            resource.name,
            resource.type,
            f"application load balancer + {lcus:g} LCU (nominal; more traffic costs more)",
            self.monthly(float(hourly) + float(lcu) * lcus),
        )
        # An internet-facing load balancer holds one public IPv4 address per subnet (AZ).
        addresses = len(_list(resource.inputs.get("subnets"))) or len(
            _list(resource.inputs.get("subnetMappings"))
        )
        if _truthy(resource.inputs.get("internal")) or not addresses:
            return
        ipv4 = self.sheet.get("public_ipv4_hourly")
        if ipv4 is None:
            yield self.no_price(resource, "public IPv4 address")
            return
        yield CostItem(
            resource.name,
            "aws:ec2/publicIpv4:Address",
            f"{addresses} public IPv4 addresses of the load balancer (one per AZ)",
            self.monthly(float(ipv4), addresses),
        )

    def web_acl(self, resource: ResourceRecord) -> Iterator[CostItem]:
        acl, rule = self.sheet.get("waf_web_acl_monthly"), self.sheet.get("waf_rule_monthly")
        if acl is None or rule is None:
            yield self.no_price(resource, "WAF web ACL")
            return
        rules = len(_list(resource.inputs.get("rules")))
        yield CostItem(
            resource.name,
            resource.type,
            f"WAF web ACL with {rules} rules (requests excluded)",
            round(float(acl) + float(rule) * rules, 2),
        )

    def cache(self, resource: ResourceRecord) -> Iterator[CostItem]:
        inputs = resource.inputs
        node_type = str(inputs.get("nodeType"))
        if inputs.get("numCacheClusters") is not None:
            nodes = _int(inputs.get("numCacheClusters"), 1)
        else:
            nodes = _int(inputs.get("numNodeGroups"), 1) * (
                _int(inputs.get("replicasPerNodeGroup"), 0) + 1
            )
        engine = str(inputs.get("engine") or "redis")
        hourly = _map(self.sheet.get("elasticache_hourly")).get(node_type)
        if hourly is None:
            yield self.no_price(resource, f"ElastiCache node type {node_type}")
            return
        discount = float(self.prices.engine_discount.get(engine, 0.0))
        note = f", {engine} {discount:.0%} below redis list price" if discount else f", {engine}"
        yield CostItem(
            resource.name,
            resource.type,
            f"ElastiCache {nodes} x {node_type}{note}",
            self.monthly(float(hourly) * (1 - discount), nodes),
        )

    def launch_template(self, group: ResourceRecord) -> ResourceRecord | None:
        referenced = self.view.referenced(group, "launchTemplate")
        if referenced:
            return referenced[0]
        templates = self.view.of_type(LAUNCH_TEMPLATE)
        # `launchTemplate` is {"id", "version"}: with several groups, match the template by id.
        template_id = _map(group.inputs.get("launchTemplate")).get("id")
        by_id = [t for t in templates if template_id and t.id == template_id]
        if by_id:
            return by_id[0]
        return templates[0] if len(templates) == 1 else None

    def node_group(self, resource: ResourceRecord) -> Iterator[CostItem]:
        inputs = resource.inputs
        scaling = _map(inputs.get("scalingConfig"))
        desired = _int(scaling.get("desiredSize"), 1)
        low, high = _int(scaling.get("minSize"), desired), _int(scaling.get("maxSize"), desired)
        template = self.launch_template(resource)
        template_inputs = template.inputs if template else {}
        types = [str(t) for t in _list(inputs.get("instanceTypes"))] or [
            str(t) for t in _list(template_inputs.get("instanceType"))
        ]
        if not types:
            yield self.no_price(resource, "a node group without instance types")
            return
        # Managed node groups launch the first listed type when it is available; price that one.
        instance_type = types[0]
        hourly = _map(self.sheet.get("ec2_hourly")).get(instance_type)
        spot = (
            " (SPOT: on-demand price shown as the upper bound)"
            if inputs.get("capacityType") == "SPOT"
            else ""
        )
        if hourly is None:
            yield self.no_price(resource, f"EC2 instance type {instance_type}")
        else:
            per_node = float(hourly) * self.hours
            yield CostItem(
                resource.name,
                resource.type,
                f"{desired} x {instance_type} nodes (min {low}..max {high}){spot}",
                round(per_node * desired, 2),
                (round(per_node * low, 2), round(per_node * high, 2)),
            )
        disk_gb = self.disk_size(inputs, template_inputs)
        gp3 = self.sheet.get("ebs_gp3_gb_month")
        if disk_gb and gp3 is not None:
            per_node = float(gp3) * disk_gb
            yield CostItem(
                resource.name,
                "aws:ebs/volume:Volume",
                f"{desired} x {disk_gb} GB gp3 node volumes (min {low}..max {high})",
                round(per_node * desired, 2),
                (round(per_node * low, 2), round(per_node * high, 2)),
            )

    @staticmethod
    def disk_size(inputs: Mapping[str, Any], template_inputs: Mapping[str, Any]) -> int:
        if inputs.get("diskSize") is not None:
            return _int(inputs.get("diskSize"), 0)
        total = 0
        for mapping in _list(template_inputs.get("blockDeviceMappings")):
            total += _int(_map(_map(mapping).get("ebs")).get("volumeSize"), 0)
        return total


def estimate(
    resources: Sequence[ResourceRecord],
    region: str,
    prices: PriceTable | None = None,
    on: date | None = None,
) -> CostEstimate:
    """Monthly on-demand estimate of `resources` in `region`, with the EKS control plane at the
    rate of its version's support status on `on` (default today)."""
    table = prices or default_prices()
    notes: list[str] = []
    if region not in table.regions:
        notes.append(f"no price sheet for region {region}; known: {', '.join(table.regions)}")
    items = tuple(_Pricer(StackView(resources), region, table, on or eks_versions.today()).items())
    return CostEstimate(region, items, table.source, table.as_of, table.excluded, tuple(notes))

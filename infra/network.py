"""Network: VPC over 2-3 AZs, public and private subnets, NAT, routes, VPC endpoints, flow logs."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra import iam
from infra.primitives import log_group, tcp_rule
from infra.settings import SettingsError, StackSettings
from infra.tags import tags
from infra.zones import ZoneError, choose_zones

# Interface endpoints keep image pulls, IRSA token exchange and secret reads off the NAT.
INTERFACE_ENDPOINTS = ("ecr.api", "ecr.dkr", "sts", "secretsmanager")


def subnet_cidrs(vpc_cidr: str, az_count: int) -> tuple[list[str], list[str]]:
    """(public, private) CIDRs: a quarter of the VPC per private subnet; public share the last."""
    vpc = ipaddress.IPv4Network(vpc_cidr)
    quarters = list(vpc.subnets(prefixlen_diff=2))
    private = [str(q) for q in quarters[:az_count]]
    public = [str(s) for s in list(quarters[3].subnets(prefixlen_diff=2))[:az_count]]
    return public, private


@dataclass
class NetworkArgs:
    settings: StackSettings
    cluster_name: str


class Network(pulumi.ComponentResource):
    vpc_id: pulumi.Output[str]
    public_subnet_ids: list[pulumi.Output[str]]
    private_subnet_ids: list[pulumi.Output[str]]
    private_route_table_ids: list[pulumi.Output[str]]
    az_names: list[str]
    az_ids: list[str]

    def __init__(
        self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        s = args.settings
        az_count = s.effective_az_count
        # Looked up before the component registers: a zone the account lacks stops the
        # program before any resource is declared.
        zones = aws.get_availability_zones(
            state="available",
            filters=[{"name": "opt-in-status", "values": ["opt-in-not-required"]}],
        )
        try:
            chosen = choose_zones(
                s.region, zones.names, zones.zone_ids, az_count, s.availability_zone_ids
            )
        except ZoneError as exc:
            raise SettingsError([str(exc)]) from None
        super().__init__("liftoff:index:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        if s.az_note:
            pulumi.log.warn(s.az_note, self)
        self.az_names = [zone_name for zone_name, _ in chosen]
        self.az_ids = [zone_id for _, zone_id in chosen]

        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=s.vpc_cidr,
            enable_dns_hostnames=True,
            enable_dns_support=True,
            tags=tags(s, f"{s.prefix}-vpc"),
            opts=child,
        )
        # The default security group allows all traffic between its members: strip its rules.
        aws.ec2.DefaultSecurityGroup(
            f"{name}-default-sg",
            vpc_id=vpc.id,
            tags=tags(s, f"{s.prefix}-default-deny"),
            opts=child,
        )
        cluster_tag = {f"kubernetes.io/cluster/{args.cluster_name}": "shared"}
        public_cidrs, private_cidrs = subnet_cidrs(s.vpc_cidr, az_count)
        public_subnets, private_subnets = [], []
        for i in range(az_count):
            public_subnets.append(
                aws.ec2.Subnet(
                    f"{name}-public-{i}",
                    vpc_id=vpc.id,
                    cidr_block=public_cidrs[i],
                    availability_zone=self.az_names[i],
                    map_public_ip_on_launch=False,
                    tags=tags(
                        s,
                        f"{s.prefix}-public-{i}",
                        {"kubernetes.io/role/elb": "1", "liftoff/tier": "public", **cluster_tag},
                    ),
                    opts=child,
                )
            )
            private_subnets.append(
                aws.ec2.Subnet(
                    f"{name}-private-{i}",
                    vpc_id=vpc.id,
                    cidr_block=private_cidrs[i],
                    availability_zone=self.az_names[i],
                    tags=tags(
                        s,
                        f"{s.prefix}-private-{i}",
                        {
                            "kubernetes.io/role/internal-elb": "1",
                            "liftoff/tier": "private",
                            **cluster_tag,
                        },
                    ),
                    opts=child,
                )
            )

        igw = aws.ec2.InternetGateway(
            f"{name}-igw", vpc_id=vpc.id, tags=tags(s, f"{s.prefix}-igw"), opts=child
        )
        public_rt = aws.ec2.RouteTable(
            f"{name}-public-rt", vpc_id=vpc.id, tags=tags(s, f"{s.prefix}-public"), opts=child
        )
        aws.ec2.Route(
            f"{name}-public-default",
            route_table_id=public_rt.id,
            destination_cidr_block="0.0.0.0/0",
            gateway_id=igw.id,
            opts=child,
        )
        for i, subnet in enumerate(public_subnets):
            aws.ec2.RouteTableAssociation(
                f"{name}-public-rta-{i}",
                subnet_id=subnet.id,
                route_table_id=public_rt.id,
                opts=child,
            )

        nat_count = az_count if s.nat_gateways == "perAz" else 1
        nats = []
        for i in range(nat_count):
            eip = aws.ec2.Eip(
                f"{name}-nat-eip-{i}",
                domain="vpc",
                tags=tags(s, f"{s.prefix}-nat-{i}"),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[igw]),
            )
            nats.append(
                aws.ec2.NatGateway(
                    f"{name}-nat-{i}",
                    allocation_id=eip.id,
                    subnet_id=public_subnets[i].id,
                    tags=tags(s, f"{s.prefix}-nat-{i}"),
                    opts=pulumi.ResourceOptions(parent=self, depends_on=[igw]),
                )
            )

        private_rts = []
        for i, subnet in enumerate(private_subnets):
            rt = aws.ec2.RouteTable(
                f"{name}-private-rt-{i}",
                vpc_id=vpc.id,
                tags=tags(s, f"{s.prefix}-private-{i}"),
                opts=child,
            )
            aws.ec2.Route(
                f"{name}-private-default-{i}",
                route_table_id=rt.id,
                destination_cidr_block="0.0.0.0/0",
                nat_gateway_id=nats[i % nat_count].id,
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-private-rta-{i}", subnet_id=subnet.id, route_table_id=rt.id, opts=child
            )
            private_rts.append(rt)

        aws.ec2.VpcEndpoint(
            f"{name}-s3-endpoint",
            vpc_id=vpc.id,
            service_name=f"com.amazonaws.{s.region}.s3",
            vpc_endpoint_type="Gateway",
            route_table_ids=[rt.id for rt in private_rts],
            tags=tags(s, f"{s.prefix}-s3"),
            opts=child,
        )
        endpoint_sg = aws.ec2.SecurityGroup(
            f"{name}-endpoints-sg",
            vpc_id=vpc.id,
            description="HTTPS from inside the VPC to interface endpoints",
            tags=tags(s, f"{s.prefix}-endpoints"),
            opts=child,
        )
        tcp_rule(
            name,
            s,
            "endpoints-https",
            "ingress",
            security_group_id=endpoint_sg.id,
            port=443,
            cidr_ipv4=s.vpc_cidr,
            description="HTTPS from the VPC",
            opts=child,
        )
        for service in INTERFACE_ENDPOINTS:
            aws.ec2.VpcEndpoint(
                f"{name}-{service.replace('.', '-')}-endpoint",
                vpc_id=vpc.id,
                service_name=f"com.amazonaws.{s.region}.{service}",
                vpc_endpoint_type="Interface",
                private_dns_enabled=True,
                subnet_ids=[sn.id for sn in private_subnets],
                security_group_ids=[endpoint_sg.id],
                tags=tags(s, f"{s.prefix}-{service}"),
                opts=child,
            )

        flow_log_group = log_group(
            f"{name}-flow-logs",
            s,
            log_group_name=f"/liftoff/{s.prefix}/vpc-flow-logs",
            tag_name=f"{s.prefix}-flow-logs",
            opts=child,
        )
        flow_role = iam.role(
            f"{name}-flow-logs-role",
            s,
            f"{s.prefix}-vpc-flow-logs",
            iam.assume_role_policy("vpc-flow-logs.amazonaws.com"),
            child,
        )
        aws.iam.RolePolicy(
            f"{name}-flow-logs-policy",
            role=flow_role.id,
            policy=flow_log_group.arn.apply(
                lambda arn: iam.policy_document(
                    {
                        "Effect": "Allow",
                        "Action": [
                            "logs:CreateLogStream",
                            "logs:PutLogEvents",
                            "logs:DescribeLogStreams",
                        ],
                        "Resource": f"{arn}:*",
                    }
                )
            ),
            opts=child,
        )
        aws.ec2.FlowLog(
            f"{name}-flow-log",
            vpc_id=vpc.id,
            traffic_type="ALL",
            log_destination_type="cloud-watch-logs",
            log_destination=flow_log_group.arn,
            iam_role_arn=flow_role.arn,
            max_aggregation_interval=60,
            tags=tags(s, f"{s.prefix}-flow-log"),
            opts=child,
        )

        self.vpc_id = vpc.id
        self.public_subnet_ids = [sn.id for sn in public_subnets]
        self.private_subnet_ids = [sn.id for sn in private_subnets]
        self.private_route_table_ids = [rt.id for rt in private_rts]
        # Resources whose deletion must wait until everything running inside the VPC is gone.
        self.foundation: list[pulumi.Resource] = [
            vpc,
            *public_subnets,
            *private_subnets,
            *private_rts,
            public_rt,
            igw,
            *nats,
        ]
        self.register_outputs(
            {
                "vpcId": vpc.id,
                "publicSubnetIds": self.public_subnet_ids,
                "privateSubnetIds": self.private_subnet_ids,
                "azNames": self.az_names,
                "azIds": self.az_ids,
            }
        )

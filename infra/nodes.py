"""Managed node groups: the node role, a launch template per group (IMDSv2 only, encrypted gp3),
the workload group sized by the node knobs and, with `liftoff:nodeCapacityType=SPOT`, a small
on-demand system group that the cluster add-ons are pinned to, so a Spot interruption never takes
the autoscaler, the load balancer controller, DNS or metrics with it.
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from infra import iam, instance_types
from infra.addons import COREDNS
from infra.names import system_node_group, workload_node_group
from infra.network import subnet_cidrs
from infra.settings import StackSettings, config_key
from infra.tags import tags

# Managed policies the node role needs to join the cluster and pull images (the VPC CNI's
# AmazonEKS_CNI_Policy is on aws-node's own role: infra/addons.py).
NODE_POLICIES = (
    "AmazonEKSWorkerNodePolicy",
    "AmazonEC2ContainerRegistryReadOnly",
    "AmazonSSMManagedInstanceCore",
)
POOL_LABEL = "liftoff/pool"
# The taint EKS's own add-ons (coredns) already tolerate; only pods that tolerate it land there.
SYSTEM_TAINT = {"key": "CriticalAddonsOnly", "value": "true", "effect": "NO_SCHEDULE"}
SYSTEM_TOLERATION = {"key": "CriticalAddonsOnly", "operator": "Exists", "effect": "NoSchedule"}
# Small and on-demand: the add-ons request ~0.5 vCPU and ~1.5 GiB with the VPA
# (capacity_checks.CLUSTER_ADDONS, VPA_ADDONS); a t3.medium leaves ~1.8 vCPU, ~3 GiB and 14 pods
# to them. Two nodes keep the two-replica add-ons apart, a third absorbs a replacement. x86
# whatever the workload's architecture: the add-on images are multi-arch.
SYSTEM_INSTANCE_TYPE = "t3.medium"
SYSTEM_MIN_SIZE, SYSTEM_MAX_SIZE = 2, 3
SYSTEM_DISK_GB = 30


@dataclass
class NodeGroupsArgs:
    settings: StackSettings
    cluster: aws.eks.Cluster
    cluster_name: str
    private_subnet_ids: Sequence[pulumi.Input[str]]
    # What the nodes need before they can become Ready (the VPC CNI) and must outlive them
    # (the network), so they are created after it and destroyed before it.
    depends_on: Sequence[pulumi.Resource]


class NodeGroups(pulumi.ComponentResource):
    """The cluster's managed node groups; `groups` lists them, workload group first."""

    groups: list[aws.eks.NodeGroup]
    names: pulumi.Output[list[str]]
    notes: list[str]

    def __init__(
        self, name: str, args: NodeGroupsArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("liftoff:index:NodeGroups", name, None, opts)
        s = args.settings
        self._settings = s
        self._args = args
        # These resources lived directly under the Cluster before this component existed: the
        # alias keeps existing stacks from replacing their nodes.
        self._moved = [pulumi.Alias(parent=opts.parent)] if opts and opts.parent else []
        child = pulumi.ResourceOptions(parent=self, aliases=self._moved)
        self._role = iam.role(
            f"{name}-node-role",
            s,
            f"{s.prefix}-eks-nodes",
            iam.assume_role_policy("ec2.amazonaws.com"),
            child,
        )
        self._attachments = [
            aws.iam.RolePolicyAttachment(
                f"{name}-node-{policy}",
                role=self._role.name,
                policy_arn=f"arn:aws:iam::aws:policy/{policy}",
                opts=child,
            )
            for policy in NODE_POLICIES
        ]
        self.groups = [
            self._group(
                f"{name}-nodes",
                workload_node_group(s.prefix),
                types=s.node_instance_types,
                capacity_type=s.node_capacity_type,
                sizes=(s.node_min_size, s.node_desired_size, s.node_max_size),
                disk_gb=s.node_disk_size_gb,
                labels={POOL_LABEL: "default"},
            )
        ]
        if self.has_system_group:
            self.groups.append(
                self._group(
                    f"{name}-system-nodes",
                    system_node_group(s.prefix),
                    types=[SYSTEM_INSTANCE_TYPE],
                    capacity_type="ON_DEMAND",
                    sizes=(SYSTEM_MIN_SIZE, SYSTEM_MIN_SIZE, SYSTEM_MAX_SIZE),
                    disk_gb=SYSTEM_DISK_GB,
                    labels={POOL_LABEL: "system"},
                    taints=[SYSTEM_TAINT],
                )
            )
        note = vpc_capacity_note(s, SYSTEM_MAX_SIZE if self.has_system_group else 0)
        # Warnings, not refusals: addresses run out only at full scale (stack output `notes`).
        self.notes = [note] if note else []
        for warning in self.notes:
            pulumi.log.warn(warning, self)
        self.names = pulumi.Output.all(*(g.node_group_name for g in self.groups))
        self.register_outputs({"nodeGroupNames": self.names})

    @property
    def has_system_group(self) -> bool:
        return self._settings.node_capacity_type == "SPOT"

    @property
    def placement(self) -> dict[str, Any]:
        """Helm values that pin an add-on's pods to the system group ({} without one)."""
        return system_placement() if self.has_system_group else {}

    def addon_configuration(self, addon: str) -> str | None:
        """`configuration_values` of a managed add-on that schedules pods (coredns): pinned to
        the system group when there is one."""
        if addon != COREDNS or not self.has_system_group:
            return None
        return json.dumps(system_placement())

    def _group(
        self,
        resource_name: str,
        group_name: str,
        *,
        types: Sequence[str],
        capacity_type: str,
        sizes: tuple[int, int, int],
        disk_gb: int,
        labels: Mapping[str, str],
        taints: Sequence[Mapping[str, str]] = (),
    ) -> aws.eks.NodeGroup:
        s, args = self._settings, self._args
        template = self._launch_template(f"{resource_name}-lt", group_name, disk_gb)
        low, desired, high = sizes
        return aws.eks.NodeGroup(
            resource_name,
            cluster_name=args.cluster.name,
            # A prefix, not a name: instance types, capacity type and AMI type cannot change in
            # place, and a replacement is created before the old group is deleted; one fixed name
            # would make EKS refuse the new group.
            node_group_name_prefix=f"{group_name}-",
            # The cluster's output, not the setting: on an upgrade the nodes follow only once the
            # control plane runs the new version (EKS refuses nodes newer than the control plane).
            version=args.cluster.version,
            node_role_arn=self._role.arn,
            subnet_ids=list(args.private_subnet_ids),
            instance_types=list(types),
            capacity_type=capacity_type,
            # One AMI type per group: settings refuse types that would need two.
            ami_type=instance_types.group_ami_type(types),
            scaling_config={"min_size": low, "desired_size": desired, "max_size": high},
            update_config={"max_unavailable_percentage": 33},
            launch_template={"id": template.id, "version": template.latest_version.apply(str)},
            labels=dict(labels),
            taints=[dict(t) for t in taints] or None,
            # Cluster autoscaler auto-discovery finds every group by these tags (EKS copies them
            # to the group's Auto Scaling group); scale-from-zero reads labels and taints from
            # eks:DescribeNodegroup.
            tags=tags(
                s,
                group_name,
                {
                    "k8s.io/cluster-autoscaler/enabled": "true",
                    f"k8s.io/cluster-autoscaler/{args.cluster_name}": "owned",
                },
            ),
            opts=pulumi.ResourceOptions(
                parent=self,
                aliases=self._moved,
                # The cluster autoscaler owns the desired size after creation.
                ignore_changes=["scalingConfig.desiredSize"],
                depends_on=[*self._attachments, *args.depends_on],
            ),
        )

    def _launch_template(
        self, resource_name: str, group_name: str, disk_gb: int
    ) -> aws.ec2.LaunchTemplate:
        s = self._settings
        node_tags = tags(s, f"{s.prefix}-node")
        return aws.ec2.LaunchTemplate(
            resource_name,
            name_prefix=f"{group_name}-",
            description="EKS managed nodes: IMDSv2 only, encrypted gp3 root volume",
            metadata_options={
                "http_endpoint": "enabled",
                "http_tokens": "required",
                "http_put_response_hop_limit": s.node_metadata_hop_limit,
                "instance_metadata_tags": "disabled",
            },
            block_device_mappings=[
                {
                    "device_name": "/dev/xvda",
                    "ebs": {
                        "volume_size": disk_gb,
                        "volume_type": "gp3",
                        "encrypted": "true",
                        "delete_on_termination": "true",
                    },
                }
            ],
            monitoring={"enabled": True},
            tag_specifications=[
                {"resource_type": "instance", "tags": node_tags},
                {"resource_type": "volume", "tags": node_tags},
            ],
            update_default_version=True,
            tags=tags(s, f"{group_name}-lt"),
            opts=pulumi.ResourceOptions(parent=self, aliases=self._moved),
        )


def system_placement() -> dict[str, Any]:
    """nodeSelector and tolerations that put a pod on the system group."""
    return {"nodeSelector": {POOL_LABEL: "system"}, "tolerations": [dict(SYSTEM_TOLERATION)]}


def vpc_capacity_note(settings: StackSettings, system_nodes: int = 0) -> str | None:
    """A warning when a private subnet cannot hold its share of `nodeMaxSize` (+ system) nodes at
    max pods (with the VPC CNI each pod takes a VPC address, each node one more), or None."""
    known = [instance_types.lookup(t) for t in settings.node_instance_types]
    pods = [t.max_pods for t in known if t is not None]
    if not pods or len(pods) < len(known):
        return None
    largest = max(pods)
    azs = settings.effective_az_count
    _, private = subnet_cidrs(settings.vpc_cidr, azs)
    # AWS reserves 5 addresses per subnet; the Auto Scaling group balances nodes over the zones.
    usable = min(ipaddress.IPv4Network(c).num_addresses for c in private) - 5
    nodes = settings.node_max_size + system_nodes
    per_subnet = math.ceil(nodes / azs) * (largest + 1)
    if per_subnet <= usable:
        return None
    return (
        f"{config_key('vpc_cidr')} = {settings.vpc_cidr}: each private subnet holds {usable} "
        f"addresses, but {nodes} nodes over {azs} zones at up to {largest} pods each "
        f"(liftoff:nodeMaxSize={settings.node_max_size}) need {per_subnet} per subnet; pods "
        "would stay Pending for want of IPs at full scale. Use a larger liftoff:vpcCidr or "
        "fewer, smaller nodes."
    )

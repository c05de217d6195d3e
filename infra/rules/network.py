"""Rules on the network: no security group open to the whole internet, nodes in private
subnets, VPC flow logs."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from infra.address_space import parse_cidr, world_open_versions
from infra.rules.base import (
    ResourceRecord,
    RuleContext,
    StackFinding,
    StackView,
    as_int,
    as_list,
    as_map,
    is_true,
    is_world,
    label,
    stack_rule,
)
from infra.rules.resource_types import (
    EKS_NODE_GROUP,
    FLOW_LOG,
    INGRESS_RULE,
    LOAD_BALANCERS,
    PREFIX_LIST,
    PREFIX_LIST_ENTRY,
    ROUTE,
    ROUTE_TABLE,
    ROUTE_TABLE_ASSOCIATION,
    SECURITY_GROUP,
    SECURITY_GROUP_RULE,
    VPC,
)

PUBLIC_HTTP_PORTS = frozenset({80, 443})
ALL_PROTOCOLS = "-1"
# Security group protocols by number, as the EC2 API also accepts them.
PROTOCOL_NAMES = {"all": ALL_PROTOCOLS, "6": "tcp", "17": "udp", "1": "icmp", "58": "icmpv6"}


@dataclass(frozen=True)
class _Ingress:
    owner: ResourceRecord  # the security group or rule resource that declares it
    group: ResourceRecord | None  # the security group it opens, when known
    protocol: str
    from_port: int
    to_port: int
    cidrs: tuple[str, ...]

    @property
    def group_key(self) -> str:
        """What ingresses of one security group share: its URN, else its id, else the owner's."""
        if self.group is not None:
            return self.group.urn
        group_id = self.owner.inputs.get("securityGroupId")
        return f"id:{group_id}" if isinstance(group_id, str) and group_id else self.owner.urn


def _ports_of(protocol: Any, from_port: Any, to_port: Any) -> tuple[str, int, int]:
    protocol = str(protocol if protocol is not None else ALL_PROTOCOLS).lower()
    protocol = PROTOCOL_NAMES.get(protocol, protocol)
    if protocol == ALL_PROTOCOLS:
        return protocol, 0, 65535
    return protocol, as_int(from_port, 0), as_int(to_port, 65535)


def _classic_ingress(
    view: StackView, owner: ResourceRecord, group: ResourceRecord | None, rule: Mapping[str, Any]
) -> _Ingress:
    """An ingress in the EC2 API's shape: an inline `ingress` block or a SecurityGroupRule."""
    protocol, low, high = _ports_of(rule.get("protocol"), rule.get("fromPort"), rule.get("toPort"))
    cidrs = [*as_list(rule.get("cidrBlocks")), *as_list(rule.get("ipv6CidrBlocks"))]
    list_ids = as_list(rule.get("prefixListIds"))
    if list_ids and owner.type == SECURITY_GROUP:
        # An inline block shares the `ingress` dependencies with its sibling blocks: those trace
        # its prefix lists only when it is the one block that has any.
        blocks = [b for b in as_list(owner.inputs.get("ingress")) if as_map(b).get("prefixListIds")]
        cidrs += _prefix_list_cidrs(view, owner, "ingress", list_ids, traced=len(blocks) == 1)
    elif list_ids:
        cidrs += _prefix_list_cidrs(view, owner, "prefixListIds", list_ids)
    return _Ingress(owner, group, protocol, low, high, tuple(cidrs))


def _ingresses(view: StackView) -> Iterator[_Ingress]:
    for group in view.of_type(SECURITY_GROUP):
        for rule in as_list(group.inputs.get("ingress")):
            yield _classic_ingress(view, group, group, as_map(rule))
    for rule in view.of_type(SECURITY_GROUP_RULE):
        if rule.inputs.get("type") == "ingress":
            groups = view.referenced(rule, "securityGroupId")
            yield _classic_ingress(view, rule, groups[0] if groups else None, rule.inputs)
    for rule in view.of_type(INGRESS_RULE):
        protocol, low, high = _ports_of(
            rule.inputs.get("ipProtocol"), rule.inputs.get("fromPort"), rule.inputs.get("toPort")
        )
        cidrs = [c for c in (rule.inputs.get("cidrIpv4"), rule.inputs.get("cidrIpv6")) if c]
        if rule.inputs.get("prefixListId"):
            cidrs += _prefix_list_cidrs(view, rule, "prefixListId", [rule.inputs["prefixListId"]])
        groups = view.referenced(rule, "securityGroupId")
        yield _Ingress(rule, groups[0] if groups else None, protocol, low, high, tuple(cidrs))


def _prefix_list_cidrs(
    view: StackView,
    owner: ResourceRecord,
    prop: str,
    list_ids: Sequence[Any],
    *,
    traced: bool = True,
) -> list[str]:
    """CIDRs of the stack's prefix lists that `list_ids` (input `prop` of `owner`) name: found by
    id, else (when `traced`) through `prop`'s dependencies. None for AWS-managed lists."""
    lists = [p for p in view.of_type(PREFIX_LIST) if p.id and p.id in list_ids]
    if not lists and traced:
        lists = [p for p in view.referenced(owner, prop) or [] if p.type == PREFIX_LIST]
    cidrs = [
        str(as_map(entry).get("cidr"))
        for plist in lists
        for entry in as_list(plist.inputs.get("entries"))
    ]
    for entry in view.of_type(PREFIX_LIST_ENTRY):
        if any(p in lists for p in view.referenced(entry, "prefixListId") or []):
            cidrs.append(str(entry.inputs.get("cidr")))
    return cidrs


def _load_balancer_groups(view: StackView) -> set[str] | None:
    """URNs of security groups attached to a load balancer; None when that cannot be traced."""
    urns: set[str] = set()
    for lb in view.of_type(*LOAD_BALANCERS):
        groups = view.referenced(lb, "securityGroups")
        if groups is None and as_list(lb.inputs.get("securityGroups")):
            return None
        urns.update(g.urn for g in groups or [])
    return urns


@dataclass(frozen=True)
class _WorldWindow:
    """Ports of one protocol that a security group's ingresses together open to every public
    address; `ingresses` are those whose CIDRs make up the cover."""

    protocol: str
    from_port: int
    to_port: int
    ingresses: tuple[_Ingress, ...]

    @property
    def cidrs(self) -> list[str]:
        """The CIDRs that cover the public space; just the /0s when there are any."""
        cidrs = list(dict.fromkeys(c for i in self.ingresses for c in i.cidrs))
        versions = world_open_versions(cidrs)
        covering = [c for c in cidrs if (net := parse_cidr(c)) and net.version in versions]
        return [c for c in covering if is_world(c)] or covering

    @property
    def web_only(self) -> bool:
        return (
            self.protocol == "tcp"
            and self.from_port == self.to_port
            and self.from_port in PUBLIC_HTTP_PORTS
        )


def _unique(items: Iterable[Any]) -> tuple[Any, ...]:
    """`items` without repeats, in order (records hold dicts: compared by identity)."""
    return tuple({id(item): item for item in items}.values())


def _world_windows(ingresses: Sequence[_Ingress]) -> Iterator[_WorldWindow]:
    """Port windows that the ingresses of one security group open to all public addresses.

    Per protocol, the ports split at every rule's bounds; a window is world-open when the CIDRs of
    the rules spanning it cover the public space (`infra.address_space`). Rules for all protocols
    count for each; a window that they open on their own is reported once, as protocol -1.
    """
    for protocol in sorted({i.protocol for i in ingresses}):
        spanning = [i for i in ingresses if i.protocol in (protocol, ALL_PROTOCOLS)]
        bounds = sorted({i.from_port for i in spanning} | {i.to_port + 1 for i in spanning})
        windows: list[_WorldWindow] = []
        for low, next_low in itertools.pairwise(bounds):
            covering = [i for i in spanning if i.from_port <= low and next_low - 1 <= i.to_port]
            if not world_open_versions(c for i in covering for c in i.cidrs):
                continue
            if protocol != ALL_PROTOCOLS and world_open_versions(
                c for i in covering if i.protocol == ALL_PROTOCOLS for c in i.cidrs
            ):
                continue
            last = windows[-1] if windows else None
            if last is not None and last.to_port + 1 == low:
                merged = _unique([*last.ingresses, *covering])
                windows[-1] = _WorldWindow(protocol, last.from_port, next_low - 1, merged)
            else:
                windows.append(_WorldWindow(protocol, low, next_low - 1, tuple(covering)))
        yield from windows


@stack_rule(
    "CKV_AWS_260",
    "No ingress from the whole internet (0.0.0.0/0, ::/0, or CIDRs that together cover every "
    "public address), except HTTP/HTTPS to the load balancer",
    "error",
    "open only 80/443 to the internet, on the load balancer's security group; reach nodes, cache "
    "and admin ports through security-group references or the VPC.",
    also=["CKV_AWS_24", "CKV_AWS_25", "CKV_AWS_277"],
)
def no_world_ingress(view: StackView, context: RuleContext) -> Iterator[StackFinding]:
    lb_groups = _load_balancer_groups(view)
    by_group: dict[str, list[_Ingress]] = {}
    for ingress in _ingresses(view):
        by_group.setdefault(ingress.group_key, []).append(ingress)
    for ingresses in by_group.values():
        for window in _world_windows(ingresses):
            group = window.ingresses[0].group
            if window.web_only and (lb_groups is None or group is None or group.urn in lb_groups):
                continue
            owners = _unique(i.owner for i in window.ingresses)
            subject = owners[0] if len(owners) == 1 or group is None else group
            ports = f"{window.protocol} {window.from_port}-{window.to_port}"
            cidrs = window.cidrs
            message = f"{label(subject)} opens {ports} to {', '.join(cidrs)}"
            if not any(is_world(c) for c in cidrs):
                message += f", which cover{'s' if len(cidrs) == 1 else ''} every public address"
            if len(owners) > 1:
                message += f" (rules {', '.join(label(o) for o in owners)})"
            if window.web_only:
                message += " on a security group that no load balancer uses"
            yield subject, message + "."


def _internet_routed_subnets(view: StackView) -> set[str]:
    """URNs of subnets whose route table has a route to an internet gateway."""
    public_tables: set[str] = set()
    for route in view.of_type(ROUTE):
        if str(route.inputs.get("gatewayId") or "").startswith("igw-"):
            public_tables.update(t.urn for t in view.referenced(route, "routeTableId") or [])
    for table in view.of_type(ROUTE_TABLE):
        for route in as_list(table.inputs.get("routes")):
            if str(as_map(route).get("gatewayId") or "").startswith("igw-"):
                public_tables.add(table.urn)
    subnets: set[str] = set()
    for association in view.of_type(ROUTE_TABLE_ASSOCIATION):
        tables = view.referenced(association, "routeTableId") or []
        if any(t.urn in public_tables for t in tables):
            subnets.update(s.urn for s in view.referenced(association, "subnetId") or [])
    return subnets


def _is_public_subnet(subnet: ResourceRecord, internet_routed: set[str]) -> bool:
    tags = as_map(subnet.inputs.get("tags"))
    return (
        is_true(subnet.inputs.get("mapPublicIpOnLaunch"))
        or "kubernetes.io/role/elb" in tags
        or subnet.urn in internet_routed
    )


@stack_rule(
    "LIFTOFF_NODES_PRIVATE",
    "Node groups run in private subnets only",
    "error",
    "pass the private subnet ids to the node group's subnetIds.",
)
def nodes_in_private_subnets(view: StackView, context: RuleContext) -> Iterator[StackFinding]:
    internet_routed = _internet_routed_subnets(view)
    for group in view.of_type(EKS_NODE_GROUP):
        subnets = view.referenced(group, "subnetIds")
        if not as_list(group.inputs.get("subnetIds")):
            yield group, f"{label(group)} names no subnets."
            continue
        if subnets is None:
            yield group, f"{label(group)} uses subnets that are not declared in this stack."
            continue
        public = [s.name for s in subnets if _is_public_subnet(s, internet_routed)]
        if public:
            yield group, f"{label(group)} places nodes in public subnets: {', '.join(public)}."


@stack_rule(
    "CKV2_AWS_11",
    "Every VPC has flow logs",
    "error",
    "add an aws.ec2.FlowLog for the VPC (traffic type ALL).",
)
def vpc_flow_logs(view: StackView, context: RuleContext) -> Iterator[StackFinding]:
    flow_logs = view.of_type(FLOW_LOG)
    for vpc in view.of_type(VPC):
        # A flow log whose VPC cannot be traced is given the benefit of the doubt.
        logged = any(
            (refs := view.referenced(log, "vpcId")) is None or any(r.urn == vpc.urn for r in refs)
            for log in flow_logs
        )
        if not logged:
            yield vpc, f"{label(vpc)} has no flow log."

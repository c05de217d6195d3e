"""AWS quotas that lists in the settings count against, checked before any resource is declared.

- Security groups: 60 inbound rules per group by default (VPC quota L-0EA8095F, per address
  family). The ALB's group opens each listener port to each `liftoff:albIngressCidrs` entry; with
  several CIDRs the stack puts them in one managed prefix list, which counts as its `max_entries`
  rules wherever a rule references it, so the count is the same either way: ports x CIDRs.
- EKS: at most 40 public endpoint access CIDRs per cluster (not adjustable).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from infra.certificate import serves_https

SG_INBOUND_RULES = 60
EKS_PUBLIC_ACCESS_CIDRS = 40


def alb_listener_ports(values: Mapping[str, Any]) -> tuple[int, ...]:
    """Ports the load balancer listens on: 80 always (HTTP, or the redirect to HTTPS), 443 with
    a certificate."""
    return (80, 443) if serves_https(values) else (80,)


def alb_inbound_rules(values: Mapping[str, Any]) -> int:
    """Inbound rules the ALB's security group counts against its quota."""
    return len(alb_listener_ports(values)) * len(values.get("alb_ingress_cidrs") or [])


def quota_problems(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, what is allowed) for every list that would exceed its AWS quota."""
    problems: list[tuple[str, str]] = []
    cidrs = list(values.get("alb_ingress_cidrs") or [])
    ports = alb_listener_ports(values)
    if len(set(cidrs)) != len(cidrs):
        problems.append(("alb_ingress_cidrs", "distinct CIDRs (AWS refuses a duplicate rule)"))
    if alb_inbound_rules(values) > SG_INBOUND_RULES:
        problems.append(
            (
                "alb_ingress_cidrs",
                f"at most {SG_INBOUND_RULES // len(ports)} CIDRs: each opens "
                f"{'ports' if len(ports) > 1 else 'port'} {' and '.join(map(str, ports))}, and a "
                f"security group holds "
                f"{SG_INBOUND_RULES} inbound rules by default (a prefix list counts as its "
                "entries); merge ranges into wider ones",
            )
        )
    if (
        values.get("cluster_endpoint_public")
        and len(values.get("cluster_endpoint_public_cidrs") or []) > EKS_PUBLIC_ACCESS_CIDRS
    ):
        problems.append(
            (
                "cluster_endpoint_public_cidrs",
                f"at most {EKS_PUBLIC_ACCESS_CIDRS} CIDRs (EKS's limit per cluster, not "
                "adjustable)",
            )
        )
    return problems

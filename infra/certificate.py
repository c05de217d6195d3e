"""Where the HTTPS listener's certificate comes from, and what AWS accepts for it.

Either `liftoff:certificateArn` (a certificate you manage) or `liftoff:domainName` with
`liftoff:hostedZoneId` (the stack requests an ACM certificate validated by DNS in that Route 53
zone and points the name at the load balancer: `infra.dns`). Pure functions over settings values:
`infra.settings_checks` checks them before any resource is declared.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from infra.settings_model import config_key

# ACM puts the domain name in the certificate's Common Name: at most 64 octets (RFC 5280).
DOMAIN_NAME_MAX = 64
DNS_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def is_dns_name(name: str) -> bool:
    labels = name.split(".")
    return (
        len(name) <= DOMAIN_NAME_MAX
        and len(labels) >= 2
        and all(DNS_LABEL_RE.match(label) for label in labels)
        # A top-level domain is never all digits (that would be an IPv4 address).
        and not labels[-1].isdigit()
    )


def arn_region(arn: str) -> str:
    """`us-west-2` from `arn:aws:acm:us-west-2:123456789012:certificate/...`."""
    return arn.split(":")[3]


def certificate_problems(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, what is allowed) for every certificate setting AWS or the stack would refuse;
    `values` are the typed settings that passed their own checks, defaults included."""
    problems: list[tuple[str, str]] = []
    domain, zone, arn = (
        values.get(k) for k in ("domain_name", "hosted_zone_id", "certificate_arn")
    )
    if (domain is None) != (zone is None):
        missing = "hosted_zone_id" if zone is None else "domain_name"
        given = "domain_name" if zone is None else "hosted_zone_id"
        problems.append(
            (
                given,
                f"set together with {config_key(missing)} (the stack validates the certificate "
                "in that Route 53 zone and points the name at the load balancer)",
            )
        )
    if domain is not None and arn is not None:
        problems.append(
            (
                "certificate_arn",
                "unset when liftoff:domainName is set (the stack then requests the certificate); "
                "give one of the two",
            )
        )
    region = values.get("region")
    if arn is not None and region is not None and arn_region(arn) != region:
        problems.append(
            (
                "certificate_arn",
                f"a certificate in the stack's region {region} (ACM certificates are regional: the "
                f"load balancer cannot use one from {arn_region(arn)})",
            )
        )
    return problems


def serves_https(values: Mapping[str, Any]) -> bool:
    """Whether the load balancer gets an HTTPS listener (a certificate ARN or a domain)."""
    return values.get("certificate_arn") is not None or values.get("domain_name") is not None

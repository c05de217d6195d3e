"""The address space the internet can send from, and whether a set of CIDRs covers all of it.

"Open to the world" is not only `0.0.0.0/0`: `0.0.0.0/1` + `128.0.0.0/1`, or a list of /8s that
skips only private ranges, lets in every internet client just the same. A set of CIDRs is world-open
for an IP version when its union contains every public address of that version:

- IPv4 public space: all of IPv4 except the ranges no internet packet comes from, as IANA's
  special-purpose registry lists them (`NON_PUBLIC_IPV4`): "this network", RFC 1918 private,
  RFC 6598 shared (carrier NAT), loopback, link-local, IETF protocol assignments, the
  documentation and benchmarking ranges, multicast and the reserved 240.0.0.0/4.
- IPv6 public space: the global unicast block 2000::/3 (RFC 4291; IANA allocates nothing else)
  except the documentation prefix 2001:db8::/32. Everything outside 2000::/3 is loopback,
  unique-local, link-local, multicast or unallocated.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

NON_PUBLIC_IPV4 = tuple(
    ipaddress.IPv4Network(cidr)
    for cidr in (
        "0.0.0.0/8",  # "this network" (RFC 1122)
        "10.0.0.0/8",  # private (RFC 1918)
        "100.64.0.0/10",  # shared address space, carrier-grade NAT (RFC 6598)
        "127.0.0.0/8",  # loopback (RFC 1122)
        "169.254.0.0/16",  # link-local (RFC 3927)
        "172.16.0.0/12",  # private (RFC 1918)
        "192.0.0.0/24",  # IETF protocol assignments (RFC 6890)
        "192.0.2.0/24",  # documentation TEST-NET-1 (RFC 5737)
        "192.168.0.0/16",  # private (RFC 1918)
        "198.18.0.0/15",  # benchmarking (RFC 2544)
        "198.51.100.0/24",  # documentation TEST-NET-2 (RFC 5737)
        "203.0.113.0/24",  # documentation TEST-NET-3 (RFC 5737)
        "224.0.0.0/4",  # multicast (RFC 5771)
        "240.0.0.0/4",  # reserved, including broadcast 255.255.255.255 (RFC 1112)
    )
)
IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
NON_PUBLIC_IPV6 = (ipaddress.IPv6Network("2001:db8::/32"),)  # documentation (RFC 3849)


def _subtract(space: list[Network], cidr: Network) -> list[Network]:
    """`space` (disjoint networks of one version) without the addresses of `cidr`."""
    left: list[Network] = []
    for net in space:
        if net.subnet_of(cidr):
            continue
        if cidr.subnet_of(net):
            left.extend(net.address_exclude(cidr))
        else:
            left.append(net)  # CIDR blocks nest or are disjoint: nothing in common
    return left


def _minus(space: Iterable[Network], cidrs: Iterable[Network]) -> list[Network]:
    left = list(space)
    for cidr in cidrs:
        left = _subtract(left, cidr)
    return left


PUBLIC_SPACE: dict[int, tuple[Network, ...]] = {
    4: tuple(sorted(_minus([ipaddress.IPv4Network("0.0.0.0/0")], NON_PUBLIC_IPV4))),
    6: tuple(_minus([IPV6_GLOBAL_UNICAST], NON_PUBLIC_IPV6)),
}


def parse_cidr(value: object) -> Network | None:
    """A CIDR (host bits allowed, as AWS does not) or None when `value` is not one."""
    if not isinstance(value, str):
        return None
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        return None


def public_gaps(cidrs: Iterable[object], version: int) -> list[Network]:
    """Public addresses of IP `version` that no CIDR in `cidrs` contains (empty: all covered)."""
    nets = [net for net in map(parse_cidr, cidrs) if net is not None and net.version == version]
    return _minus(PUBLIC_SPACE[version], nets)


def world_open_versions(cidrs: Iterable[object]) -> tuple[int, ...]:
    """The IP versions (4, 6) whose whole public space the union of `cidrs` covers."""
    cidrs = list(cidrs)
    return tuple(version for version in (4, 6) if not public_gaps(cidrs, version))

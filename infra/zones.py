"""Availability zones by zone ID: the letter names (us-east-1a) map to different physical zones
in each account, the IDs (use1-az1) do not. EKS refuses control-plane subnets in some IDs, so
those are skipped when zones are chosen and refused when pinned (`liftoff:availabilityZoneIds`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

# The short region codes AWS puts in zone IDs (and ElastiCache endpoints).
REGION_CODES = {"us-east-1": "use1", "us-east-2": "use2", "us-west-1": "usw1", "us-west-2": "usw2"}
ZONE_ID_RE = r"^(use1|use2|usw1|usw2)-az[0-9]$"
# EKS does not place control planes in these zone IDs and refuses cluster subnets there (EKS user
# guide, "Subnet requirements and considerations"); US regions only.
EKS_UNSUPPORTED_ZONE_IDS = ("use1-az3", "usw1-az2")


class ZoneError(ValueError):
    """The account's zones cannot satisfy the settings; message shaped like a settings problem."""


def zone_id_problems(
    region: str, zone_ids: Sequence[str], az_count: int | None
) -> Iterator[tuple[str, str]]:
    """(field, allowed) for pinned zone IDs; `az_count` is liftoff:azCount when set explicitly."""
    if not zone_ids:
        return
    code = REGION_CODES.get(region, "")
    allowed = (
        f"2-3 distinct zone IDs of {region} like {code}-az1, not "
        f"{', '.join(EKS_UNSUPPORTED_ZONE_IDS)} (EKS refuses control-plane subnets there)"
    )
    if (
        not 2 <= len(zone_ids) <= 3
        or len(set(zone_ids)) != len(zone_ids)
        or not all(re.match(ZONE_ID_RE, z) and z.startswith(f"{code}-") for z in zone_ids)
        or set(zone_ids) & set(EKS_UNSUPPORTED_ZONE_IDS)
    ):
        yield ("availability_zone_ids", allowed)
    elif az_count is not None and az_count != len(zone_ids):
        yield (
            "availability_zone_ids",
            f"as many zone IDs as liftoff:azCount ({az_count}), or leave azCount unset",
        )


def choose_zones(
    region: str, names: Sequence[str], zone_ids: Sequence[str], count: int, pinned: Sequence[str]
) -> list[tuple[str, str]]:
    """(name, zone ID) of the zones to use: `pinned` in that order, else the first `count`
    zones (AWS lists them by name) whose IDs EKS accepts."""
    by_id = dict(zip(zone_ids, names, strict=True))
    if pinned:
        missing = [z for z in pinned if z not in by_id]
        if missing:
            raise ZoneError(
                f"liftoff:availabilityZoneIds = {json.dumps(list(pinned))}: this account's "
                f"available zones in {region} are {', '.join(sorted(by_id))} "
                f"({', '.join(missing)} is not among them)"
            )
        return [(by_id[z], z) for z in pinned]
    usable = [(by_id[z], z) for z in zone_ids if z not in EKS_UNSUPPORTED_ZONE_IDS]
    if len(usable) < count:
        raise ZoneError(
            f"liftoff:azCount = {count}: this account has {len(usable)} available zones in "
            f"{region} that EKS accepts ({', '.join(z for _, z in usable)}); set a lower azCount"
        )
    return usable[:count]


def pinned_zone_count(raw: Mapping[str, Any]) -> int | None:
    """liftoff:azCount when the stack sets it (not the default)."""
    value = raw.get("az_count")
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None

"""What ElastiCache offers: engine versions (data/elasticache-versions.json), their parameter group
families, and which node types Liftoff knows (the price data) and can run with its cache settings.

Pure data and checks, no Pulumi: `infra.settings` calls them before any resource is declared.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).with_name("data")
VERSIONS_PATH = DATA_DIR / "elasticache-versions.json"
PRICES_PATH = DATA_DIR / "prices.json"
# Families whose nodes cannot take part in the stack's cache settings, and why (pulumi-aws
# ReplicationGroup docstrings and the ElastiCache user guide).
NO_SNAPSHOTS = ("cache.t1.", "cache.t2.")
DATA_TIERING_ONLY = ("cache.r6gd.",)


@lru_cache(maxsize=1)
def engine_versions() -> dict[str, dict[str, str]]:
    """engine -> {major.minor version: parameter group family}."""
    data = json.loads(VERSIONS_PATH.read_text())
    return {engine: dict(versions) for engine, versions in data["engines"].items()}


def offered_versions_text(engine: str) -> str:
    return ", ".join(engine_versions().get(engine, {}))


def versions_allowed_text() -> str:
    """The human phrase of every offered engine/version pair."""
    return "; ".join(f"{engine} {offered_versions_text(engine)}" for engine in engine_versions())


def parameter_group_family(engine: str, version: str) -> str:
    """The family ElastiCache requires for a parameter group of `engine` `version`."""
    try:
        return engine_versions()[engine][version]
    except KeyError:
        raise ValueError(
            f"{engine} {version} is not in {VERSIONS_PATH.name}: {versions_allowed_text()}"
        ) from None


@lru_cache(maxsize=1)
def _node_prices() -> dict[str, dict[str, float]]:
    regions = json.loads(PRICES_PATH.read_text())["regions"]
    return {region: dict(sheet.get("elasticache_hourly", {})) for region, sheet in regions.items()}


def known_node_types(region: str) -> list[str]:
    """Node types with a price for `region` in data/prices.json."""
    return sorted(_node_prices().get(region, {}))


def cache_problems(v: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(field, allowed) for every cache setting ElastiCache or the stack could not run."""
    engine, version = v.get("cache_engine"), v.get("cache_engine_version")
    if engine and version and version not in engine_versions().get(engine, {}):
        yield (
            "cache_engine_version",
            f"a version ElastiCache offers for {engine}: {offered_versions_text(engine)} "
            f"({VERSIONS_PATH.relative_to(DATA_DIR.parent.parent)})",
        )
    node_type, region = v.get("cache_node_type") or "", v.get("region") or ""
    if not node_type:
        return
    known = known_node_types(region)
    if node_type not in known and not v.get("allow_unknown_instance_types"):
        yield (
            "cache_node_type",
            f"a node type in infra/data/prices.json for {region}: {', '.join(known)} "
            "(or set liftoff:allowUnknownInstanceTypes=true to accept one Liftoff cannot price)",
        )
    if node_type.startswith(DATA_TIERING_ONLY):
        yield (
            "cache_node_type",
            "not an r6gd type: those nodes require data tiering, which Liftoff does not turn on",
        )
    if v.get("cache_snapshot_retention_days") and node_type.startswith(NO_SNAPSHOTS):
        yield (
            "cache_snapshot_retention_days",
            f"0 on {node_type.rsplit('.', 1)[0]}.* node types (no snapshot support)",
        )

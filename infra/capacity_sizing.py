"""Inputs and arithmetic of the capacity plan (`infra.capacity`): the traffic profile, the
gateway CPU per request from the benchmark, the model prices from the app's catalog, and the
sizing and cost formulas (pods, nodes, cache memory, tokens). The assumptions behind the
constants are listed in `infra.capacity`'s docstring and printed with every plan.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from infra import instance_types
from infra.capacity_checks import AddonRequests, pods_that_fit
from infra.cost import PRICES_PATH, PriceTable
from infra.settings import REPO_ROOT
from infra.settings_checks import RANGES

BENCH_RESULTS = REPO_ROOT / "bench" / "results.json"
SECONDS_PER_HOUR = 3600

# Without a benchmark: the issue-3 throughput target (3,000 cache-miss req/s on one core), hits
# at the same cost, streams at 4x (an assumption; the benchmark's stream phase replaces it).
DEFAULT_MISS_CPU_US = 1e6 / 3000
DEFAULT_STREAM_FACTOR = 4.0

# ~4 characters per token (OpenAI's rule of thumb for English) stored as UTF-8, and the JSON
# envelope of a chat.completion (id, model, fingerprint, choices, usage with its details: ~700 B,
# rounded up).
BYTES_PER_TOKEN = 4
ENTRY_JSON_OVERHEAD_BYTES = 1024
# Measured: used_memory grew 2,258 B per key over 20,000 SET ... EX 3600 of 1,824 B values under
# `liftoff:cache:v1:<sha256 hex>` keys (redis-server 7.0.15): 434 B of key, dict and expires
# entries and jemalloc size-class rounding above the value (the rounding varies with its size).
REDIS_PER_KEY_OVERHEAD_BYTES = 440
CACHE_MEMORY_HEADROOM = 1.25
# ElastiCache default parameter groups reserve 25% of maxmemory (reserved-memory-percent).
CACHE_RESERVED_MEMORY = 0.25
# ElastiCache's maxclients (not modifiable) for Redis OSS and Valkey nodes.
CACHE_MAX_CLIENTS = 65000

# What the settings accept, to say when a plan is beyond them.
MAX_APP_MIN_REPLICAS = int(RANGES["app_min_replicas"][1])
MAX_APP_MAX_REPLICAS = int(RANGES["app_max_replicas"][1])
MAX_NODE_SIZE = int(RANGES["node_max_size"][1])


class CapacityError(ValueError):
    """Input the plan cannot be computed from (message names the option)."""


@dataclass(frozen=True)
class Traffic:
    rps: float
    prompt_tokens: int = 500
    completion_tokens: int = 200
    stream_share: float = 0.0
    cache_hit_rate: float = 0.0
    model: str = "fast"
    provider_cached_share: float = 0.0

    def problems(self) -> list[str]:
        found = []
        for name in ("rps", "prompt_tokens", "completion_tokens"):
            if getattr(self, name) < 0:
                found.append(f"--{name.replace('_', '-')} = {getattr(self, name)}: must be >= 0")
        for name in ("stream_share", "cache_hit_rate", "provider_cached_share"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                found.append(f"--{name.replace('_', '-')} = {value}: a share between 0 and 1")
        return found


@dataclass(frozen=True)
class GatewayCost:
    """Gateway CPU per request (microseconds) by kind, and where each figure comes from."""

    miss_us: float
    hit_us: float
    stream_us: float
    source: str

    def mixed_us(self, stream_share: float, hit_rate: float) -> float:
        json_us = (1 - hit_rate) * self.miss_us + hit_rate * self.hit_us
        return (1 - stream_share) * json_us + stream_share * self.stream_us


def _phase_cpu(phases: Mapping[str, Any], phase: str) -> tuple[float, float] | None:
    """(gateway CPU us per request, req/s) of a benchmark phase, or None when it is absent."""
    found = phases.get(phase, {})
    us = found.get("cpu_us_per_request", {}).get("gateway")
    return None if us is None or not found.get("rps") else (float(us), float(found["rps"]))


def gateway_cost(path: Path = BENCH_RESULTS) -> GatewayCost:
    """The benchmark's gateway CPU per request, or the default assumption without results.

    The open-loop phases (hits, streams) run below saturation, so their CPU per request also
    carries the gateway's idle work (timers, metrics, the event loop) spread over fewer requests.
    The cache miss, measured both saturated and open loop, gives that idle CPU per second:
    (open us - saturated us) x open req/s; it is taken out of the other phases' figures."""
    if not path.exists():
        return GatewayCost(
            DEFAULT_MISS_CPU_US,
            DEFAULT_MISS_CPU_US,
            DEFAULT_MISS_CPU_US * DEFAULT_STREAM_FACTOR,
            f"default assumption (no {path.name}): 3,000 cache-miss req/s per core, hits alike, "
            f"streams {DEFAULT_STREAM_FACTOR:g}x",
        )
    data = json.loads(path.read_text())
    miss = float(data["figures"]["cache_miss_gateway_cpu_us_per_request"])
    phases = data.get("phases", {})
    open_miss = _phase_cpu(phases, "gateway_open_cache_miss")
    idle_us_per_s = max(0.0, (open_miss[0] - miss) * open_miss[1]) if open_miss else 0.0

    def marginal(phase: str, fallback: float, note: str) -> tuple[float, str]:
        measured = _phase_cpu(phases, phase)
        if measured is None:
            return fallback, note
        us, rps = measured
        net = us - idle_us_per_s / rps
        # An idle estimate larger than the phase's whole figure says nothing: keep the figure.
        return (net, f"phases.{phase}") if net > 0 else (us, f"phases.{phase} (as measured)")

    hit, hit_src = marginal("gateway_open_cache_hit", miss, "assumed = miss")
    stream, stream_src = marginal(
        "gateway_open_stream",
        miss * DEFAULT_STREAM_FACTOR,
        f"assumed {DEFAULT_STREAM_FACTOR:g}x miss",
    )
    idle = (
        f", less {idle_us_per_s / 1e6:.2f} core of idle work (phases.gateway_open_cache_miss)"
        if open_miss
        else ""
    )
    rel = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
    return GatewayCost(
        miss,
        hit,
        stream,
        f"{rel}: miss figures.cache_miss_gateway_cpu_us_per_request; hit {hit_src}, "
        f"stream {stream_src} cpu_us_per_request.gateway{idle}",
    )


@dataclass(frozen=True)
class ModelPrice:
    name: str
    input_usd_per_1m: float
    output_usd_per_1m: float
    cached_input_usd_per_1m: float | None


@dataclass(frozen=True)
class AppDefaults:
    """What the plan needs from the gateway's config (app/defaults.yaml via its loader)."""

    cache_ttl_s: int
    redis_pool: int
    models: Mapping[str, ModelPrice]
    aliases: Mapping[str, str]

    def model(self, name: str) -> ModelPrice:
        pinned = self.aliases.get(name, name)
        if pinned not in self.models:
            known = sorted({*self.aliases, *self.models})
            raise CapacityError(f"--model = {name}: unknown model; known: {', '.join(known)}")
        return self.models[pinned]


def app_defaults() -> AppDefaults:
    from app.config import load_config

    config = load_config(env={})
    return AppDefaults(
        cache_ttl_s=config.cache.ttl_s,
        redis_pool=config.redis.max_connections,
        models={
            name: ModelPrice(
                name, spec.input_usd_per_1m, spec.output_usd_per_1m, spec.cached_input_usd_per_1m
            )
            for name, spec in config.models.catalog.items()
        },
        aliases=dict(config.models.aliases),
    )


def per_pod_rps(us_per_request: float, pod_cores: float, hpa_target: int, workers: int) -> float:
    """Requests per second of one pod with its CPU request used up to the HPA target; a worker
    process runs on one core at most, so `workers` caps the cores a pod can use."""
    return min(pod_cores * hpa_target / 100, workers) * 1e6 / us_per_request


def pods_for_load(rps: float, pod_rps: float) -> int:
    """Pods serving `rps` at `pod_rps` each (at least one)."""
    return max(1, math.ceil(rps / pod_rps - 1e-9))


def with_zone_loss(count: int, azs: int) -> int:
    """`count` sized so that losing one of `azs` zones still leaves `count`."""
    return math.ceil(count * azs / (azs - 1) - 1e-9)


def nodes_for_pods(
    node: instance_types.InstanceType,
    pods: int,
    cpu_m: int,
    memory_mib: int,
    addons: AddonRequests,
) -> int | None:
    """Fewest nodes of `node` holding `pods` gateway pods after add-ons (None: a pod never fits)."""
    if pods_that_fit(node, MAX_NODE_SIZE * 10, cpu_m, memory_mib, addons) < pods:
        return None
    low, high = 1, MAX_NODE_SIZE * 10
    while low < high:
        mid = (low + high) // 2
        if pods_that_fit(node, mid, cpu_m, memory_mib, addons) >= pods:
            high = mid
        else:
            low = mid + 1
    return low


def cache_entry_bytes(completion_tokens: int) -> int:
    """Redis memory of one cached answer of `completion_tokens`."""
    answer = completion_tokens * BYTES_PER_TOKEN + ENTRY_JSON_OVERHEAD_BYTES
    return answer + REDIS_PER_KEY_OVERHEAD_BYTES


def cache_bytes_needed(traffic: Traffic, ttl_s: int) -> float:
    """Bytes one TTL of cache entries takes: every miss writes one that lives `ttl_s`."""
    entries = traffic.rps * (1 - traffic.cache_hit_rate) * ttl_s
    return entries * cache_entry_bytes(traffic.completion_tokens)


@lru_cache(maxsize=1)
def cache_maxmemory_bytes() -> dict[str, int]:
    """ElastiCache `maxmemory` per node type (data/prices.json, with its source there)."""
    return dict(json.loads(PRICES_PATH.read_text())["elasticache_maxmemory_bytes"])


def cache_usable_bytes(node_type: str) -> int | None:
    maxmemory = cache_maxmemory_bytes().get(node_type)
    return None if maxmemory is None else int(maxmemory * (1 - CACHE_RESERVED_MEMORY))


def smallest_cache_node(needed: float, region: str, prices: PriceTable) -> str | None:
    """Cheapest priced node type whose usable memory holds `needed` with the head room."""
    hourly = prices.regions.get(region, {}).get("elasticache_hourly", {})
    fitting = [
        (price, name)
        for name, price in hourly.items()
        if (usable := cache_usable_bytes(name)) is not None
        and needed * CACHE_MEMORY_HEADROOM <= usable
    ]
    return min(fitting)[1] if fitting else None


def monthly_requests(rps: float, hours_per_month: float) -> float:
    return rps * hours_per_month * SECONDS_PER_HOUR


def cost_per_call_usd(traffic: Traffic, model: ModelPrice) -> float:
    """Provider price of one upstream call of the profile."""
    prompt_price = model.input_usd_per_1m
    if model.cached_input_usd_per_1m is not None:
        share = traffic.provider_cached_share
        prompt_price = (1 - share) * model.input_usd_per_1m + share * model.cached_input_usd_per_1m
    prompt = traffic.prompt_tokens * prompt_price
    return (prompt + traffic.completion_tokens * model.output_usd_per_1m) / 1e6


def token_cost_usd(traffic: Traffic, model: ModelPrice, hours_per_month: float) -> dict[str, float]:
    """Monthly provider cost without the gateway's cache and with it (misses only go upstream)."""
    calls = monthly_requests(traffic.rps, hours_per_month)
    per_call = cost_per_call_usd(traffic, model)
    return {
        "without_cache": round(calls * per_call, 2),
        "with_cache": round(calls * (1 - traffic.cache_hit_rate) * per_call, 2),
    }

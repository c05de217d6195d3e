"""Capacity plan of a stack for a traffic profile: `python -m infra.capacity --stack <env> --rps N`.

From the requests per second, their shape (prompt and completion tokens, share of streams, cache
hit rate, model) and the stack's settings, it sizes:

- gateway pods at the HPA CPU target, from the gateway CPU per request that the benchmark measured
  (`bench/results.json`, see bench/README.md), plus head room to lose one availability zone:
  pods = ceil(load pods x az / (az - 1));
- nodes per instance type after kube-reserved, daemonsets and add-ons (`infra.capacity_checks`),
  the cache node type (memory for one TTL of entries, connections), and whether
  `nodeMaxSize`, `appMaxReplicas` and the VPC (`infra.nodes.vpc_capacity_note`) carry it;
- the monthly infrastructure cost from the plan's price table (`infra.cost`) and the monthly
  token cost with and without the gateway's cache, from the app's model catalog;
- the `liftoff:` values to set, as `pulumi config set` lines.

Assumptions (printed with the plan; the constants are in `infra.capacity_sizing`):
- Gateway CPU per request: a cache miss costs the saturated figure
  `figures.cache_miss_gateway_cpu_us_per_request`; a hit and a stream what the open-loop phases
  `gateway_open_cache_hit` / `gateway_open_stream` measured, less the idle work the miss phases
  show (`gateway_cost`). Streams are counted at the stream cost whether or not the cache answers
  them.
- A cache entry is the provider's answer as JSON (`app/gateway.py` stores `orjson.dumps(answer)`
  under a SHA-256 digest of the request, so the prompt takes no cache memory):
  `BYTES_PER_TOKEN` bytes per completion token plus `ENTRY_JSON_OVERHEAD_BYTES` of envelope, plus
  `REDIS_PER_KEY_OVERHEAD_BYTES` for the key and Redis' bookkeeping.
- `--provider-cached-share` of prompt tokens are billed at the catalog's cached-input price
  (the provider's prompt cache); models without that price bill every prompt token as input.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from infra import instance_types
from infra.capacity_checks import DAEMONSET_PODS, AddonRequests, addon_requests, pods_that_fit
from infra.capacity_sizing import (
    BYTES_PER_TOKEN,
    CACHE_MAX_CLIENTS,
    CACHE_MEMORY_HEADROOM,
    CACHE_RESERVED_MEMORY,
    ENTRY_JSON_OVERHEAD_BYTES,
    MAX_APP_MAX_REPLICAS,
    MAX_APP_MIN_REPLICAS,
    MAX_NODE_SIZE,
    REDIS_PER_KEY_OVERHEAD_BYTES,
    AppDefaults,
    CapacityError,
    GatewayCost,
    ModelPrice,
    Traffic,
    app_defaults,
    cache_bytes_needed,
    cache_usable_bytes,
    gateway_cost,
    monthly_requests,
    nodes_for_pods,
    per_pod_rps,
    pods_for_load,
    smallest_cache_node,
    token_cost_usd,
    with_zone_loss,
)
from infra.cost import PriceTable, default_prices
from infra.quantities import cpu_cores, memory_bytes
from infra.settings import SettingsError, StackSettings, config_key, load_stack_file

# --- the plan ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NodePlan:
    instance_type: str
    nodes: int | None
    pods_per_node: int
    hourly_usd: float | None
    monthly_usd: float | None


@dataclass
class CapacityPlan:
    stack: str
    region: str
    traffic: Traffic
    throughput_source: str
    cpu_us_per_request: float
    per_pod_rps: float
    azs: int
    load_pods: int
    pods: int
    nodes: list[NodePlan]
    cache_entries: int
    cache_bytes: int
    cache_node_type: str | None
    cache_connections: int
    monthly_requests: float
    token_cost_usd: dict[str, float]
    infra_cost_usd: dict[str, float | None]
    checks: list[dict[str, Any]] = field(default_factory=list)
    config_set: list[str] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _infra_cost(
    settings: StackSettings, node: NodePlan | None, cache_type: str | None, prices: PriceTable
) -> dict[str, float | None]:
    """Monthly cost of what scales with the load plus the stack's fixed core, from the table."""
    sheet = prices.regions.get(settings.region, {})
    hours = prices.hours_per_month
    nodes = node.nodes if node and node.nodes is not None else None
    ec2 = node.monthly_usd if node else None
    disks = (
        round(nodes * settings.node_disk_size_gb * float(sheet["ebs_gp3_gb_month"]), 2)
        if nodes is not None and "ebs_gp3_gb_month" in sheet
        else None
    )
    cache_hourly = sheet.get("elasticache_hourly", {}).get(cache_type or "")
    discount = float(prices.engine_discount.get(settings.cache_engine, 0.0))
    cache = (
        round(float(cache_hourly) * (1 - discount) * hours * (1 + settings.cache_replicas), 2)
        if cache_hourly is not None
        else None
    )
    nat_count = settings.effective_az_count if settings.nat_gateways == "perAz" else 1
    fixed = hours * (
        float(sheet.get("eks_cluster_hourly", 0))
        + nat_count * float(sheet.get("nat_gateway_hourly", 0))
        + float(sheet.get("alb_hourly", 0))
        + float(sheet.get("alb_lcu_hourly", 0)) * prices.alb_nominal_lcu
    )
    parts = {"nodes": ec2, "node_disks": disks, "cache": cache, "fixed_core": round(fixed, 2)}
    priced = [v for v in parts.values() if v is not None]
    total = round(sum(priced), 2) if len(priced) == len(parts) else None
    return {**parts, "total": total}


def _node_plans(
    settings: StackSettings, pods: int, names: Sequence[str], prices: PriceTable
) -> list[NodePlan]:
    cpu_m = math.ceil(cpu_cores(settings.pod_cpu_request) * 1000)
    memory_mib = math.ceil(memory_bytes(settings.pod_memory_request) / 2**20)
    addons = addon_requests(settings.node_capacity_type, settings.vpa_mode)
    hourly = prices.regions.get(settings.region, {}).get("ec2_hourly", {})
    plans = []
    for name in names:
        node = instance_types.lookup(name)
        if node is None:
            plans.append(NodePlan(name, None, 0, hourly.get(name), None))
            continue
        count = nodes_for_pods(node, pods, cpu_m, memory_mib, addons)
        if count is not None:
            count = max(count, settings.node_min_size)
        per_node = pods_that_fit(node, 1, cpu_m, memory_mib, AddonRequests(0, 0, 0))
        price = hourly.get(name)
        monthly = (
            round(float(price) * prices.hours_per_month * count, 2)
            if price is not None and count is not None
            else None
        )
        plans.append(NodePlan(name, count, per_node, price, monthly))
    return plans


def plan_capacity(
    settings: StackSettings,
    traffic: Traffic,
    cost: GatewayCost | None = None,
    app: AppDefaults | None = None,
    prices: PriceTable | None = None,
    instance_type_names: Sequence[str] | None = None,
) -> CapacityPlan:
    """The capacity plan of `settings` for `traffic` (raises CapacityError on bad input)."""
    problems = traffic.problems()
    if problems:
        raise CapacityError("; ".join(problems))
    cost = cost or gateway_cost()
    app = app or app_defaults()
    prices = prices or default_prices()
    model = app.model(traffic.model)
    names = list(instance_type_names or settings.node_instance_types)

    us = cost.mixed_us(traffic.stream_share, traffic.cache_hit_rate)
    pod_rps = per_pod_rps(
        us, cpu_cores(settings.pod_cpu_request), settings.hpa_cpu_target, settings.gateway_workers
    )
    azs = settings.effective_az_count
    load_pods = pods_for_load(traffic.rps, pod_rps)
    pods = max(with_zone_loss(load_pods, azs), settings.app_min_replicas)
    node_plans = _node_plans(settings, pods, names, prices)

    cache_bytes = cache_bytes_needed(traffic, app.cache_ttl_s)
    cache_type = smallest_cache_node(cache_bytes, settings.region, prices)
    connections = pods * settings.gateway_workers * app.redis_pool
    tokens = token_cost_usd(traffic, model, prices.hours_per_month)
    # The group may launch any listed type: size it for the one that needs the most nodes.
    sized = [p for p in node_plans if p.nodes is not None]
    worst = max(sized, key=lambda p: p.nodes or 0) if sized else None
    infra = _infra_cost(settings, node_plans[0] if node_plans else None, cache_type, prices)

    result = CapacityPlan(
        stack=settings.stack,
        region=settings.region,
        traffic=traffic,
        throughput_source=cost.source,
        cpu_us_per_request=round(us, 1),
        per_pod_rps=round(pod_rps, 1),
        azs=azs,
        load_pods=load_pods,
        pods=pods,
        nodes=node_plans,
        cache_entries=round(traffic.rps * (1 - traffic.cache_hit_rate) * app.cache_ttl_s),
        cache_bytes=round(cache_bytes),
        cache_node_type=cache_type,
        cache_connections=connections,
        monthly_requests=monthly_requests(traffic.rps, prices.hours_per_month),
        token_cost_usd=tokens,
        infra_cost_usd=infra,
    )
    result.checks = _checks(settings, result, worst, prices)
    result.config_set = _config_lines(settings, result, worst)
    result.assumptions = _assumptions(traffic, model, app)
    return result


def _check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"check": name, "ok": ok, "detail": detail}


def _checks(
    settings: StackSettings, plan: CapacityPlan, worst: NodePlan | None, prices: PriceTable
) -> list[dict[str, Any]]:
    from infra.nodes import SYSTEM_MAX_SIZE, vpc_capacity_note

    checks = [
        _check(
            config_key("app_max_replicas"),
            plan.pods <= settings.app_max_replicas,
            f"{settings.app_max_replicas} configured, {plan.pods} pods needed",
        )
    ]
    if worst is None:
        checks.append(_check(config_key("node_max_size"), False, "no instance type holds a pod"))
    else:
        checks.append(
            _check(
                config_key("node_max_size"),
                (worst.nodes or 0) <= settings.node_max_size,
                f"{settings.node_max_size} configured, {worst.nodes} {worst.instance_type} "
                "nodes needed",
            )
        )
        system = SYSTEM_MAX_SIZE if settings.node_capacity_type == "SPOT" else 0
        sized = settings.model_copy(update={"node_max_size": worst.nodes})
        note = vpc_capacity_note(sized, system)
        addon_pods = addon_requests(settings.node_capacity_type, settings.vpa_mode).pods
        ips = plan.pods + addon_pods + (worst.nodes or 0) * (DAEMONSET_PODS + 1)
        checks.append(
            _check(
                config_key("vpc_cidr"),
                note is None,
                note
                or f"{settings.vpc_cidr} holds {worst.nodes} nodes at max pods "
                f"({ips} addresses for the gateway and add-on pods, daemonsets and nodes)",
            )
        )
    usable = cache_usable_bytes(settings.cache_node_type)
    needed = plan.cache_bytes * CACHE_MEMORY_HEADROOM
    checks.append(
        _check(
            config_key("cache_node_type"),
            usable is not None and needed <= usable,
            f"{settings.cache_node_type} keeps "
            + (f"{usable / 2**30:.2f} GiB" if usable is not None else "an unknown amount")
            + f" for data, {needed / 2**30:.2f} GiB needed (one TTL + "
            f"{CACHE_MEMORY_HEADROOM - 1:.0%})",
        )
    )
    checks.append(
        _check(
            "cache connections",
            plan.cache_connections <= CACHE_MAX_CLIENTS,
            f"{plan.cache_connections} (pods x workers x redis.max_connections) of "
            f"{CACHE_MAX_CLIENTS} maxclients",
        )
    )
    return checks


def _config_lines(settings: StackSettings, plan: CapacityPlan, worst: NodePlan | None) -> list[str]:
    values: dict[str, Any] = {
        "app_min_replicas": min(plan.pods, MAX_APP_MIN_REPLICAS),
        "app_max_replicas": min(max(settings.app_max_replicas, plan.pods), MAX_APP_MAX_REPLICAS),
    }
    if worst is not None and worst.nodes is not None:
        nodes = min(worst.nodes, MAX_NODE_SIZE)
        values["node_min_size"] = nodes
        values["node_desired_size"] = nodes
        values["node_max_size"] = min(max(settings.node_max_size, nodes), MAX_NODE_SIZE)
    if plan.cache_node_type is not None:
        values["cache_node_type"] = plan.cache_node_type
    lines = [
        f"pulumi config set --stack {settings.stack} {config_key(k)} {v}" for k, v in values.items()
    ]
    if plan.pods > MAX_APP_MIN_REPLICAS or (worst and (worst.nodes or 0) > MAX_NODE_SIZE):
        lines.append(
            "# beyond what liftoff settings accept (appMinReplicas <= 100, node sizes <= 100): "
            "raise liftoff:podCpuRequest or the instance size"
        )
    return lines


def _assumptions(traffic: Traffic, model: ModelPrice, app: AppDefaults) -> list[str]:
    cached = (
        f"{traffic.provider_cached_share:.0%} of prompt tokens at the cached-input price "
        f"(${model.cached_input_usd_per_1m}/1M)"
        if model.cached_input_usd_per_1m is not None
        else f"{model.name} has no cached-input price: every prompt token at the input price"
    )
    return [
        f"cache entry = completion tokens x {BYTES_PER_TOKEN} B + {ENTRY_JSON_OVERHEAD_BYTES} B "
        f"JSON + {REDIS_PER_KEY_OVERHEAD_BYTES} B key and Redis overhead (the prompt is only "
        "hashed into the key); "
        f"TTL {app.cache_ttl_s} s (app cache.ttl_s); {CACHE_RESERVED_MEMORY:.0%} of maxmemory "
        "reserved by ElastiCache",
        "streams cost the stream CPU figure whether or not the cache answers them",
        f"provider prompt cache: {cached}",
        "infrastructure: nodes, their gp3 disks and cache nodes scale with the load; fixed core = "
        "EKS control plane, NAT gateways, ALB + nominal LCU (make plan prices the whole stack)",
    ]


# --- output ------------------------------------------------------------------------------


def _money(value: float | None) -> str:
    return "n/a (no price)" if value is None else f"${value:,.2f}"


def render_table(plan: CapacityPlan) -> str:
    from rich.console import Console
    from rich.table import Table

    t = plan.traffic
    console = Console(file=io.StringIO(), record=True, width=110, force_terminal=False)
    console.print(
        f"capacity plan: stack {plan.stack} ({plan.region}), {t.rps:g} req/s, "
        f"{t.prompt_tokens}+{t.completion_tokens} tokens, {t.stream_share:.0%} streams, "
        f"{t.cache_hit_rate:.0%} cache hits, model {t.model}"
    )
    console.print(
        f"throughput: {plan.per_pod_rps:,.1f} req/s per pod at the HPA target, "
        f"{plan.cpu_us_per_request} µs gateway CPU per request of this mix",
        markup=False,
    )
    console.print(f"  source: {plan.throughput_source}", markup=False)
    sizing = Table("what", "value", title="sizing")
    sizing.add_row("pods for the load", str(plan.load_pods))
    sizing.add_row(f"pods with one of {plan.azs} zones lost", str(plan.pods))
    for node in plan.nodes:
        sizing.add_row(
            f"nodes of {node.instance_type} ({node.pods_per_node} pods each)",
            "does not fit a pod"
            if node.nodes is None
            else f"{node.nodes} ({_money(node.monthly_usd)}/month)",
        )
    sizing.add_row(
        "cache",
        f"{plan.cache_entries:,} entries, {plan.cache_bytes / 2**30:.2f} GiB -> "
        f"{plan.cache_node_type or 'no priced node type is large enough'}",
    )
    sizing.add_row("cache connections", f"{plan.cache_connections:,}")
    sizing.add_row("monthly requests", f"{plan.monthly_requests:,.0f}")
    console.print(sizing)
    money = Table("monthly cost", "USD", title="cost (730 h)")
    for key, value in plan.infra_cost_usd.items():
        money.add_row(f"infrastructure: {key.replace('_', ' ')}", _money(value))
    money.add_row("tokens without the cache", _money(plan.token_cost_usd["without_cache"]))
    money.add_row("tokens with the cache", _money(plan.token_cost_usd["with_cache"]))
    console.print(money)
    checks = Table("check", "ok", "detail", title="does the stack carry it")
    for check in plan.checks:
        checks.add_row(check["check"], "yes" if check["ok"] else "NO", check["detail"])
    console.print(checks)
    console.print("set:")
    for line in plan.config_set:
        console.print(f"  {line}", markup=False)
    console.print("assumptions:")
    for line in plan.assumptions:
        console.print(f"  - {line}", markup=False)
    return console.export_text()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.capacity", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--stack", required=True, help="stack name (Pulumi.<stack>.yaml)")
    parser.add_argument("--rps", type=float, required=True, help="requests per second")
    parser.add_argument("--prompt-tokens", type=int, default=Traffic.prompt_tokens)
    parser.add_argument("--completion-tokens", type=int, default=Traffic.completion_tokens)
    parser.add_argument("--stream-share", type=float, default=Traffic.stream_share)
    parser.add_argument("--cache-hit-rate", type=float, default=Traffic.cache_hit_rate)
    parser.add_argument("--model", default=Traffic.model, help="alias or pinned catalog name")
    parser.add_argument(
        "--provider-cached-share",
        type=float,
        default=Traffic.provider_cached_share,
        help="share of prompt tokens the provider bills at its cached-input price",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="draw monthly cost against req/s")
    args = parser.parse_args(argv)
    traffic = Traffic(
        rps=args.rps,
        prompt_tokens=args.prompt_tokens,
        completion_tokens=args.completion_tokens,
        stream_share=args.stream_share,
        cache_hit_rate=args.cache_hit_rate,
        model=args.model,
        provider_cached_share=args.provider_cached_share,
    )
    try:
        settings = load_stack_file(args.stack)
        plan = plan_capacity(settings, traffic)
    except (SettingsError, CapacityError) as exc:
        print(f"make capacity: {exc}", file=sys.stderr)
        return 2
    if args.plot:
        from infra.capacity_plot import save_cost_plot

        save_cost_plot(settings, traffic, Path(args.plot))
    if args.json:
        print(json.dumps(plan.as_json(), indent=2))
    else:
        print(render_table(plan), end="")
    if args.plot:
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make capacity ARGS="--plot FILE.png"`: monthly cost (infrastructure, and infrastructure +
tokens with the cache) against requests per second, one line per instance type of the stack
(matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI machines or servers

from matplotlib.figure import Figure

from infra.capacity import plan_capacity
from infra.capacity_sizing import AppDefaults, GatewayCost, Traffic
from infra.settings import StackSettings

POINTS = 12


def rps_range(rps: float, points: int = POINTS) -> list[float]:
    """`points` even steps up to twice the planned load (at least 1 req/s at the top)."""
    top = max(2 * rps, 1.0)
    return [top * (i + 1) / points for i in range(points)]


def cost_figure(
    settings: StackSettings,
    traffic: Traffic,
    instance_types: Sequence[str] | None = None,
    cost: GatewayCost | None = None,
    app: AppDefaults | None = None,
) -> Figure:
    """Two panels, infrastructure alone and infrastructure + tokens (with the cache), each with
    one line per instance type: tokens usually dwarf the infrastructure, which the left shows."""
    names = list(instance_types or settings.node_instance_types)
    xs = rps_range(traffic.rps)
    figure = Figure(figsize=(12, 5))
    infra_axes, total_axes = figure.subplots(1, 2)
    for name in names:
        infra, total = [], []
        for rps in xs:
            plan = plan_capacity(settings, replace(traffic, rps=rps), cost, app, None, [name])
            usd = plan.infra_cost_usd["total"]
            infra.append(float("nan") if usd is None else usd)
            total.append(float("nan") if usd is None else usd + plan.token_cost_usd["with_cache"])
        infra_axes.plot(xs, infra, marker="o", label=name)
        total_axes.plot(xs, total, marker="o", label=name)
    infra_axes.set_title("infrastructure")
    total_axes.set_title(f"infrastructure + tokens ({traffic.cache_hit_rate:.0%} cache hits)")
    for axes in (infra_axes, total_axes):
        axes.set_xlabel("requests per second")
        axes.set_ylabel("USD per month")
        axes.grid(True, alpha=0.3)
        axes.legend(title="instance type")
    figure.suptitle(
        f"{settings.stack} ({settings.region}): {traffic.model}, "
        f"{traffic.prompt_tokens}+{traffic.completion_tokens} tokens, "
        f"{traffic.stream_share:.0%} streams"
    )
    figure.tight_layout()
    return figure


def save_cost_plot(settings: StackSettings, traffic: Traffic, path: Path) -> Figure:
    figure = cost_figure(settings, traffic)
    figure.savefig(path, format="png", dpi=100)
    return figure

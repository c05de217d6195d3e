"""`python -m reliability [--short] [--out reliability/report.json]`: the fault phases through
HAProxy in front of two gateways on one Redis, then accounting under concurrency with four;
writes the report and prints a short table. Exit status 1 when any phase lost a request, saw an
unexplained error or failed a check."""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import tempfile
import time
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from reliability import accounting, faults, report
from reliability.cluster import SHUTDOWN_DELAY_S, Timings, cluster, haproxy_binary

DEFAULT_OUT = Path(__file__).resolve().parent / "report.json"


@dataclass(frozen=True)
class Plan:
    rate: float  # requests per second offered in each phase
    phase_s: float
    restart_s: float  # the rolling restart's longest phase: it ends a second after both restarts
    fault_gateways: int = 2
    accounting_gateways: int = 4


SHORT = Plan(rate=50, phase_s=3, restart_s=60)
FULL = Plan(rate=200, phase_s=25, restart_s=90)


PARTS = (*(name for name, _ in faults.PHASES), "accounting")


async def run_phases(
    workdir: Path, plan: Plan, timings: Timings, only: Collection[str]
) -> dict[str, Any]:
    phases: dict[str, Any] = {}
    with cluster(workdir, plan.fault_gateways, faults.client_keys(), timings=timings) as run:
        for seed, (name, phase_fn) in enumerate(faults.PHASES):
            if name not in only:
                continue
            duration = plan.restart_s if name == "rolling-restart" else plan.phase_s
            phase = await phase_fn(run, plan.rate, duration, seed)
            phases[name] = report.phase_entry(phase)
            print(f"reliability: {name} done in {phase.duration_s:.1f} s", file=sys.stderr)
    return phases


async def run_accounting(workdir: Path, plan: Plan, timings: Timings, short: bool) -> dict:
    with cluster(
        workdir, plan.accounting_gateways, accounting.client_keys(), timings=timings,
        balancer=False,
    ) as run:  # fmt: skip
        return await accounting.run(run, short=short)


def run(short: bool, only: Collection[str] = PARTS) -> dict[str, Any]:
    """The phases and accounting checks named in `only` (default: all)."""
    plan = SHORT if short else FULL
    timings = Timings()
    haproxy_binary()  # fail at once, with the message, when it is missing
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="liftoff-reliability-") as tmp:
        phases_dir, accounting_dir = Path(tmp, "phases"), Path(tmp, "accounting")
        phases_dir.mkdir()
        accounting_dir.mkdir()
        phases: dict[str, Any] = {}
        checks: dict[str, Any] = {}
        if set(only) - {"accounting"}:
            phases = asyncio.run(run_phases(phases_dir, plan, timings, only))
        if "accounting" in only:
            checks = asyncio.run(run_accounting(accounting_dir, plan, timings, short))
    return {
        "mode": "short" if short else "full",
        "seconds": round(time.monotonic() - started, 1),
        "machine": {"python": platform.python_version(), "cpus": _cpus()},
        "plan": asdict(plan),
        "timings": asdict(timings) | {"shutdown_delay_s": SHUTDOWN_DELAY_S},
        "phases": phases,
        "accounting": checks,
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def failures(result: dict[str, Any]) -> list[str]:
    out = [
        f"{name}: {problem}"
        for name, phase in result["phases"].items()
        for problem in phase["problems"]
    ]
    out += [
        f"accounting {name}: {problem}"
        for name, check in result["accounting"].items()
        for problem in check["problems"]
    ]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability", description=__doc__)
    parser.add_argument("--short", action="store_true", help="seconds per phase (make test)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--only",
        type=lambda value: [part.strip() for part in value.split(",") if part.strip()],
        default=list(PARTS),
        help=f"comma-separated subset of {','.join(PARTS)} (default: all)",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only) - set(PARTS))
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    result = run(args.short, args.only)
    report.write(args.out, result)
    print(report.table(result))
    print(f"reliability: {result['mode']} run in {result['seconds']} s, report in {args.out}")
    return 1 if failures(result) else 0


if __name__ == "__main__":
    sys.exit(main())

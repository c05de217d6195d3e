"""report.json and the short table of a run."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from reliability.faults import Phase


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def phase_entry(phase: Phase) -> dict[str, Any]:
    outcomes = phase.outcomes
    failed: Counter[str] = Counter()
    for o in outcomes:
        if o.complete and not o.succeeded:
            failed[f"{o.status}-error-event" if o.stream_error else str(o.status)] += 1
    lost = [o for o in outcomes if not o.complete]
    latencies = [o.latency_ms for o in outcomes]
    return {
        "sent": len(outcomes),
        "succeeded": sum(o.succeeded for o in outcomes),
        "failed": dict(sorted(failed.items())),
        "lost": len(lost),
        "unexplained_5xx": sum(o.status >= 500 or o.stream_error for o in phase.unexplained),
        "unexplained": len(phase.unexplained),
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "retries": phase.retries,
        "provider_calls": phase.provider_calls,
        "circuit_transitions": phase.circuit_transitions,
        "duration_s": round(phase.duration_s, 1),
        "by_cause": dict(
            sorted(
                Counter(
                    f"{o.spec.tag or 'clean'} {o.spec.kind}{'-stream' if o.spec.stream else ''} "
                    f"{o.status} {o.error_code}"
                    for o in outcomes
                    if not o.succeeded
                ).items()
            )
        ),
        "lost_by_detail": dict(Counter(f"{o.status} {o.detail[:70]}" for o in lost).most_common(8)),
        "checks": phase.checks,
        "problems": phase.problems,
        "examples": [
            {
                "kind": o.spec.kind,
                "stream": o.spec.stream,
                "tag": o.spec.tag,
                "status": o.status,
                "code": o.error_code,
                "latency_ms": round(o.latency_ms, 1),
                "detail": o.detail,
            }
            for o in (lost + phase.unexplained)[:8]
        ],
    }


def write(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")


def table(report: dict[str, Any]) -> str:
    rows = [
        f"{'phase':<16}{'sent':>6}{'ok':>6}{'lost':>5}{'5xx?':>5}{'p50':>8}{'p99':>8}"
        f"{'retry':>6}{'circ':>5}  failed"
    ]
    for name, p in report["phases"].items():
        failed = " ".join(f"{k}:{v}" for k, v in p["failed"].items()) or "-"
        rows.append(
            f"{name:<16}{p['sent']:>6}{p['succeeded']:>6}{p['lost']:>5}{p['unexplained_5xx']:>5}"
            f"{p['p50_ms'] or 0:>8.0f}{p['p99_ms'] or 0:>8.0f}{p['retries']:>6}"
            f"{p['circuit_transitions']:>5}  {failed}"
        )
        rows += [f"{'':<16}! {problem}" for problem in p["problems"]]
    accounting = report.get("accounting")
    if accounting:
        for name, check in accounting.items():
            verdict = "ok" if not check.get("problems") else "; ".join(check["problems"])
            rows.append(f"accounting {name:<20} {verdict}")
    return "\n".join(rows)

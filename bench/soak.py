"""`make soak` / `python -m bench.soak`: does the gateway's memory stay flat under steady load?

Starts the simulator, redis-server (when on PATH) and the gateway as `python -m bench` does, then
offers a moderate mixed load for `--duration` seconds (open loop, one `bench.loadgen` process per
kind: cache misses, cache hits, non-cacheable streams, batched completions) while sampling the
gateway's resident set (VmRSS) every `--interval` seconds. The first `--warmup` seconds fill the
pools, caches and allocator arenas; from the first sample after them to the last, RSS may grow
at most `--max-growth` (5%). Writes bench/soak.json; exits 1 when memory grew too much or the
gateway answered anything but 2xx.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.__main__ import chat_request, completion_request
from bench.stack import CLIENT_KEY, PYTHON, ROOT, CpuPlan, http_json, stack

# Shares of the offered rate, by kind of request.
MIX = {"cache_miss": 0.5, "cache_hit": 0.25, "stream": 0.15, "batched_completion": 0.1}


def rss_growth(samples: list[dict[str, float]], warmup_s: float) -> dict[str, Any]:
    """Growth of RSS from the first sample at or after `warmup_s` to the last sample."""
    after = [s for s in samples if s["t_s"] >= warmup_s]
    if len(after) < 2:
        raise ValueError(
            f"{len(after)} RSS sample(s) after the {warmup_s:g} s warm-up; need 2: run longer "
            "or sample more often"
        )
    baseline, end = after[0]["rss_mib"], after[-1]["rss_mib"]
    return {
        "rss_mib_after_warmup": baseline,
        "rss_mib_end": end,
        "rss_mib_max": max(s["rss_mib"] for s in samples),
        "growth_fraction": round(end / baseline - 1, 4),
    }


def load_specs(gateway: str, rate: float, seconds: float) -> dict[str, dict[str, Any]]:
    auth = f"Bearer {CLIENT_KEY}"
    requests = {
        "cache_miss": chat_request(auth, unique=True),
        "cache_hit": chat_request(auth, unique=False),
        "stream": chat_request(auth, unique=True, stream=True, cacheable=False),
        "batched_completion": completion_request(auth),
    }
    return {
        kind: {
            "target": gateway,
            "request": requests[kind],
            "mode": "open",
            "rate": rate * share,
            "duration_s": seconds,
            "connections": 16,
        }
        for kind, share in MIX.items()
    }


def summarize_load(kind: str, result: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": kind,
        "requests": result["requests"],
        "ok": result["ok"],
        "statuses": result["statuses"],
        "errors": result["errors"],
        "rps": result["rps"],
        "latency_ms": result["latency_ms"],
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load in all")
    parser.add_argument("--warmup", type=float, default=60.0, help="first seconds not judged")
    parser.add_argument("--rate", type=float, default=200.0, help="open-loop requests/s in all")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--max-growth", type=float, default=0.05, help="allowed RSS growth")
    parser.add_argument("--no-redis", action="store_true", help="in-process cache and limiter")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "soak.json")
    args = parser.parse_args(argv)
    for name in ("duration", "rate", "interval"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be > 0")
    if not 0 <= args.warmup < args.duration:
        parser.error("--warmup must be >= 0 and shorter than --duration")
    if args.max_growth < 0:
        parser.error("--max-growth must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = CpuPlan()
    started = dt.datetime.now(dt.UTC)
    workdir = Path(tempfile.mkdtemp(prefix="liftoff-soak-"))
    print(
        f"liftoff soak: {args.duration:g} s at {args.rate:g} req/s, RSS every {args.interval:g} s, "
        f"logs in {workdir}",
        flush=True,
    )
    samples: list[dict[str, float]] = []
    notes: list[str] = []
    with stack(plan, workdir, bare_proxy=False, use_redis=not args.no_redis) as running:
        assert running.gateway is not None
        gateway = running.children["gateway"]
        hit = chat_request(f"Bearer {CLIENT_KEY}", unique=False)
        http_json(running.gateway + hit["path"], hit["headers"], hit["body"])  # prime the hit
        loads = {}
        for kind, spec in load_specs(running.gateway, args.rate, args.duration).items():
            loads[kind] = subprocess.Popen(
                [PYTHON, "-m", "bench.loadgen", json.dumps(spec)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            cpus = plan.cpus_for("loadgen")
            if cpus:
                os.sched_setaffinity(loads[kind].pid, cpus)
        began = time.monotonic()
        while any(p.poll() is None for p in loads.values()):
            elapsed = time.monotonic() - began
            if elapsed <= args.duration:
                samples.append({"t_s": round(elapsed, 1), "rss_mib": round(gateway.rss_mib(), 2)})
                print(f"  {elapsed:6.1f} s  RSS {samples[-1]['rss_mib']:.1f} MiB", flush=True)
            time.sleep(min(args.interval, max(0.1, args.duration - elapsed)))
        samples.append(
            {"t_s": round(time.monotonic() - began, 1), "rss_mib": round(gateway.rss_mib(), 2)}
        )
        results = []
        for kind, process in loads.items():
            out, err = process.communicate()
            if process.returncode != 0:
                raise RuntimeError(f"{kind} load failed: {err.decode(errors='replace')[-2000:]}")
            results.append(summarize_load(kind, json.loads(out.decode().strip().splitlines()[-1])))
        rss_after_start = running.gateway_rss_mib_after_start
        log_errors = gateway.count_log_errors()
    failed = [r for r in results if r["ok"] != r["requests"] or r["errors"]]
    for r in failed:
        notes.append(
            f"{r['kind']}: {r['requests'] - r['ok']} non-2xx {r['statuses']} {r['errors']}"
        )
    if log_errors:
        notes.append(f"the gateway logged {log_errors} error line(s): see {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    memory = rss_growth(samples, args.warmup)
    grew_too_much = memory["growth_fraction"] > args.max_growth
    if grew_too_much:
        notes.append(
            f"RSS grew {memory['growth_fraction']:.1%} after the warm-up "
            f"(limit {args.max_growth:.0%})"
        )
    report = {
        "generated_at": started.isoformat(timespec="seconds"),
        "machine": {
            "cpus_usable": len(plan.available) or os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rate_rps": args.rate,
            "mix": MIX,
            "interval_s": args.interval,
            "max_growth_fraction": args.max_growth,
            "redis": running.redis,
        },
        "figures": {"rss_mib_after_start": rss_after_start, **memory},
        "pass": not grew_too_much and not failed,
        "loads": results,
        "samples": samples,
        "notes": notes,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    verdict = "PASS" if report["pass"] else "FAIL"
    print(
        f"{verdict}: RSS {memory['rss_mib_after_warmup']:.1f} -> {memory['rss_mib_end']:.1f} MiB "
        f"({memory['growth_fraction']:+.1%}) after the warm-up; wrote {args.out}"
    )
    for note in notes:
        print(f"note: {note}")
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())

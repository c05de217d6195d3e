"""The overload scenario of issue 10, scaled to loopback and bounded: a provider answering in
2.5 s, an open loop of ``--rate`` requests/s for ``--seconds``, ``--concurrency`` slots per model.

    .venv/bin/python -m bench.overload [--gateway-root /tmp/ovbase] [--queue-timeout-s 3]

Starts the simulator (this checkout's) and ``python -m app`` from ``--gateway-root`` (default:
this checkout; another worktree measures its code with the same load), sends the load, prints one
JSON document: statuses, latency percentiles of all answers and of the 200s, the shed share and
the Retry-After values given. Everything listens on 127.0.0.1 and every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from bench import loadgen
from tests.fixtures.redis import free_port

ROOT = Path(__file__).resolve().parents[1]
KEY = "overload-key-0123456789abcdef"
# Reported from the gateway's /metrics after the load (those a gateway version has).
UPSTREAM_SERIES = (
    "liftoff_upstream_retries_total",
    "liftoff_upstream_shed_total",
    "liftoff_upstream_retry_budget_exhausted_total",
    "liftoff_upstream_queue_wait_seconds_count",
    "liftoff_upstream_queue_wait_seconds_sum",
)


@contextlib.contextmanager
def process(args: list[str], cwd: Path, env: dict[str, str], ready_url: str) -> Iterator[None]:
    """A process, once ``ready_url`` answers (30 s at most); terminated at exit."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=out)
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out.seek(0)
                    raise RuntimeError(f"{args} did not start:\n{out.read().decode()[-2000:]}")
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(ready_url, timeout=1).status_code < 500:
                        break
                time.sleep(0.1)
            yield
        finally:
            proc.terminate()
            proc.wait(timeout=30)


async def offered_load(url: str, rate: float, seconds: float) -> dict[str, Any]:
    """bench.loadgen's open loop, one connection per request (none waits for a connection, so
    each latency is the gateway's), summarized over every answer, not only the 200s."""
    request = {
        "path": "/v1/chat/completions",
        "headers": {"Authorization": f"Bearer {KEY}"},
        "body": {
            "model": "fast",
            "temperature": 0.7,  # not cacheable: every request goes to the provider
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "Say hello __N__"}],
        },
    }
    total = int(rate * seconds)
    template = loadgen.RequestTemplate.from_spec(url, request)
    recorder, _ = await loadgen.open_loop(
        url, template, rate, seconds, total, (b"retry-after", None)
    )
    samples = recorder.samples
    late = [s.latency_s + s.start_delay_s for s in samples]  # from the schedule

    def seconds_at(values: list[float], q: float) -> float | None:
        return round(loadgen.percentile(sorted(values), q), 3) if values else None

    served = [s.latency_s + s.start_delay_s for s in samples if s.status == 200]
    shed = [s for s in samples if s.status == 503]
    return {
        "sent": total,
        "statuses": dict(Counter(s.status for s in samples)),
        "errors": dict(recorder.errors),
        "p50_s": seconds_at(late, 50),
        "p99_s": seconds_at(late, 99),
        "max_s": seconds_at(late, 100),
        "ok_p50_s": seconds_at(served, 50),
        "ok_max_s": seconds_at(served, 100),
        "shed_share": round(len(shed) / total, 3),
        "shed_max_s": seconds_at([s.latency_s + s.start_delay_s for s in shed], 100),
        "retry_after": dict(Counter(s.header for s in shed)),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    sim_port, gw_port = free_port(), free_port()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("LIFTOFF")}
    simulator = [sys.executable, "-m", "app.simulator", "--port", str(sim_port)]
    simulator += ["--ttft-ms", str(args.provider_s * 1000), "--token-ms", "0"]
    gateway_env = base_env | {
        "LIFTOFF_UPSTREAM_URL": f"http://127.0.0.1:{sim_port}",
        "LIFTOFF_CLIENT_KEYS": json.dumps([{"name": "load", "key": KEY}]),
        "LIFTOFF_UPSTREAM_API_KEY": "sk-overload-0123456789abcdef",
        "LIFTOFF__SERVER__PORT": str(gw_port),
        "LIFTOFF__SERVER__SHUTDOWN_DELAY_S": "0",
        "LIFTOFF__SERVER__ACCESS_LOG": "false",
        "LIFTOFF__UPSTREAM__MAX_CONCURRENCY_PER_MODEL": str(args.concurrency),
        "LIFTOFF__UPSTREAM__TIMEOUT_READ_S": str(args.attempt_timeout_s),
        "LIFTOFF__LIMITS__DEFAULT_RPM": "1000000",
        "LIFTOFF__LIMITS__DEFAULT_TPM": "100000000",
    }
    if args.queue_timeout_s is not None:
        gateway_env["LIFTOFF__UPSTREAM__QUEUE_TIMEOUT_S"] = str(args.queue_timeout_s)
    sim_ready = f"http://127.0.0.1:{sim_port}/v1/models"
    gw_ready = f"http://127.0.0.1:{gw_port}/readyz"
    with (
        process(simulator, ROOT, base_env, sim_ready),
        process([sys.executable, "-m", "app"], args.gateway_root, gateway_env, gw_ready),
    ):
        result = asyncio.run(offered_load(f"http://127.0.0.1:{gw_port}", args.rate, args.seconds))
        scraped = httpx.get(f"http://127.0.0.1:{gw_port}/metrics", timeout=10).text
    result["upstream_metrics"] = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in scraped.splitlines()
        if line.startswith(UPSTREAM_SERIES)
    }
    settings = {k: v for k, v in vars(args).items() if k != "gateway_root"}
    return {"gateway_root": str(args.gateway_root), **settings, **result}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.overload", description=__doc__)
    parser.add_argument("--gateway-root", type=Path, default=ROOT)
    parser.add_argument("--rate", type=float, default=40, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--provider-s", type=float, default=2.5, help="the provider's latency")
    parser.add_argument("--attempt-timeout-s", type=float, default=3)
    parser.add_argument(
        "--queue-timeout-s", type=float, default=None, help="unset: the gateway's default"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    print(json.dumps(run(parse_args(argv)), indent=2))


if __name__ == "__main__":
    main()

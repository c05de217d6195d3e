"""`make bench` / `python -m bench`: the gateway's own cost, measured on loopback.

Starts the provider simulator (no artificial latency, so every millisecond measured is real work),
a redis-server when the binary exists (else the gateway's in-process back ends, recorded as such)
and the gateway (`python -m app`, one worker, every feature on: auth, limits, cache lookup,
accounting, metrics, access log) as child processes on free 127.0.0.1 ports, each pinned to its
own CPU where the machine has enough. Load comes from `bench.loadgen`, a separate process, so it
never shares the gateway's core. Writes bench/results.json and prints a table with the issue's
speed targets marked pass/fail.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
MODEL = "gpt-4o-mini-2024-07-18"
UPSTREAM_KEY = "sk-bench-upstream"
CLIENT_KEY = "lk-bench-" + os.urandom(8).hex()
# Limits far above the offered load: they are checked on every request but never reject.
CLIENT_KEYS = [{"name": "bench", "key": CLIENT_KEY, "rpm": 10**9, "tpm": 10**12}]

TARGETS = {
    "cache_miss_rps": (">=", 3000.0, "requests/s"),
    "added_latency_p50_ms": ("<=", 1.0, "ms"),
    "added_latency_p99_ms": ("<=", 3.0, "ms"),
    "cache_hit_p50_ms": ("<", 1.0, "ms"),
    "stream_ttft_overhead_ms": ("<", 1.0, "ms"),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (Linux /proc)."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def count_log_errors(self) -> int:
        """Error-level lines in the child's log (JSON logs or plain tracebacks)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return 0
        return sum(
            1 for line in text.splitlines() if '"level":"error"' in line or line.startswith("ERROR")
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class CpuPlan:
    """Which CPU each part runs on: the gateway gets one to itself whenever there are two."""

    def __init__(self) -> None:
        try:
            self.available = sorted(os.sched_getaffinity(0))
        except AttributeError:  # not Linux: no pinning
            self.available = []

    def cpus_for(self, role: str) -> set[int] | None:
        cpus = self.available
        if len(cpus) < 2:
            return None
        if role == "gateway":
            return {cpus[0]}
        others = cpus[1:]
        return {others[("simulator", "loadgen", "redis").index(role) % len(others)]}

    def describe(self) -> dict[str, Any]:
        return {
            role: sorted(self.cpus_for(role) or []) or "unpinned"
            for role in ("gateway", "simulator", "loadgen", "redis")
        }


def spawn(
    name: str, cmd: Sequence[str], env: dict[str, str], cpus: set[int] | None, workdir: Path
) -> Child:
    log_path = workdir / f"{name}.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        list(cmd), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    log.close()
    if cpus:
        os.sched_setaffinity(process.pid, cpus)
    return Child(name, process, log_path)


def http_json(url: str, headers: dict[str, str] | None = None, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers or {})
    if data is not None:
        request.add_header("content-type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def wait_ready(
    child: Child, url: str, headers: dict[str, str] | None = None, timeout: float = 30
) -> Any:
    """The JSON answer of `url` once `child` serves it; RuntimeError with its log if never."""
    deadline = time.monotonic() + timeout
    while True:
        if child.process.poll() is not None:
            raise RuntimeError(f"{child.name} exited at start:\n{child.log_tail()}")
        try:
            return http_json(url, headers)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{child.name} not ready at {url}:\n{child.log_tail()}"
                ) from None
            time.sleep(0.1)


def redis_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    return out.split(" v=", 1)[1].split()[0] if " v=" in out else out.strip()


def machine_info(plan: CpuPlan) -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in ("uvicorn", "uvloop", "httptools", "aiohttp", "orjson", "redis", "starlette"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[package] = version(package)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "cpus_usable": len(plan.available) or os.cpu_count(),
        "pinning": plan.describe(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "git_commit": commit,
        # Other work on the machine skews the tails; the load average shows how busy it was.
        "loadavg_1m_5m_15m": [round(x, 2) for x in os.getloadavg()],
    }


def run_load(spec: dict[str, Any], plan: CpuPlan) -> dict[str, Any]:
    process = subprocess.Popen(
        [PYTHON, "-m", "bench.loadgen", json.dumps(spec)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    cpus = plan.cpus_for("loadgen")
    if cpus:
        os.sched_setaffinity(process.pid, cpus)
    out, err = process.communicate(timeout=spec["duration_s"] + spec.get("warmup_s", 0) + 120)
    if process.returncode != 0:
        raise RuntimeError(f"load generator failed: {err.decode(errors='replace')[-2000:]}")
    return json.loads(out.decode().strip().splitlines()[-1])


def chat_request(auth: str, *, unique: bool, stream: bool = False) -> dict[str, Any]:
    content = (
        "Benchmark prompt __N__: explain caching." if unique else "Benchmark: explain caching."
    )
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,  # deterministic: the gateway looks up (and fills) its cache
        "max_tokens": 16,
    }
    if stream:
        body["stream"] = True
    return {"path": "/v1/chat/completions", "headers": {"Authorization": auth}, "body": body}


def completion_request(auth: str) -> dict[str, Any]:
    body = {
        "model": MODEL,
        "prompt": "Benchmark completion __N__: one line about batching.",
        "max_tokens": 16,
        "temperature": 0.7,  # not cacheable: every request goes upstream (batched)
    }
    return {"path": "/v1/completions", "headers": {"Authorization": auth}, "body": body}


@contextlib.contextmanager
def stack(args: argparse.Namespace, plan: CpuPlan, workdir: Path) -> Iterator[dict[str, Any]]:
    """Simulator, optional redis-server and gateway, stopped whatever happens."""
    children: list[Child] = []
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIFTOFF")}
        sim_port = free_port()
        sim = spawn(
            "simulator",
            [
                PYTHON,
                "-m",
                "app.simulator",
                "--port",
                str(sim_port),
                "--ttft-ms",
                str(args.ttft_ms),
                "--token-ms",
                str(args.token_ms),
            ],
            env,
            plan.cpus_for("simulator"),
            workdir,
        )
        children.append(sim)
        sim_url = f"http://127.0.0.1:{sim_port}"
        wait_ready(sim, sim_url + "/_simulator/stats")
        info: dict[str, Any] = {"simulator": sim_url, "children": {"simulator": sim}}
        if args.simulator_only:
            yield info
            return
        redis_binary = shutil.which("redis-server")
        redis_url = None
        if redis_binary and not args.no_redis:
            redis_port = free_port()
            redis = spawn(
                "redis",
                [
                    redis_binary,
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(redis_port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(workdir),
                ],
                env,
                plan.cpus_for("redis"),
                workdir,
            )
            children.append(redis)
            info["children"]["redis"] = redis
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
            info["redis"] = f"redis-server {redis_version(redis_binary)} at {redis_url}"
            time.sleep(0.3)
        else:
            reason = "--no-redis given" if args.no_redis else "redis-server not found on PATH"
            info["redis"] = f"in-process cache and limiter ({reason})"
        gw_port = free_port()
        config_path = workdir / "gateway.yaml"
        config_path.write_text(
            json.dumps(
                {
                    "server": {"host": "127.0.0.1", "port": gw_port},
                    "upstream": {"url": sim_url},
                    "redis": {"url": redis_url},
                }
            )
        )
        gw_env = {
            **env,
            "LIFTOFF_CONFIG": str(config_path),
            "LIFTOFF_UPSTREAM_API_KEY": UPSTREAM_KEY,
            "LIFTOFF_CLIENT_KEYS": json.dumps(CLIENT_KEYS),
            "LIFTOFF_WORKERS": "1",
            "LIFTOFF_LOG_LEVEL": args.log_level,
        }
        gateway = spawn("gateway", [PYTHON, "-m", "app"], gw_env, plan.cpus_for("gateway"), workdir)
        children.append(gateway)
        gw_url = f"http://127.0.0.1:{gw_port}"
        wait_ready(gateway, gw_url + "/readyz")
        info.update(gateway=gw_url, config=json.loads(config_path.read_text()))
        info["children"]["gateway"] = gateway
        yield info
    finally:
        for child in reversed(children):
            child.stop()


class Runner:
    def __init__(self, args: argparse.Namespace, plan: CpuPlan, info: dict[str, Any]) -> None:
        self.args = args
        self.plan = plan
        self.info = info
        self.phases: dict[str, Any] = {}
        self.notes: list[str] = []

    def phase(
        self,
        name: str,
        target: str,
        request: dict[str, Any],
        expect_cache: str | None = None,
        **load: Any,
    ) -> dict[str, Any]:
        spec = {
            "target": target,
            "request": request,
            "duration_s": self.args.duration,
            "warmup_s": self.args.warmup,
            "connections": self.args.connections,
            "numeric_header": "x-liftoff-overhead-ms",
            "capture_header": "x-liftoff-cache",
            **load,
        }
        children = self.info["children"]
        before = {k: c.cpu_seconds() for k, c in children.items()}
        started = time.perf_counter()
        result = run_load(spec, self.plan)
        wall = time.perf_counter() - started
        spent = {k: c.cpu_seconds() - before[k] for k, c in children.items()}
        result["cpu_cores_used"] = {k: round(v / wall, 2) for k, v in spent.items()}
        # CPU per request hardly depends on what else the machine runs: the steadiest figure.
        served = result["requests"] + result["warmup_requests"]
        result["cpu_us_per_request"] = {
            k: round(v / served * 1e6, 1) if served else None for k, v in spent.items()
        }
        result["mode"] = spec["mode"]
        if spec["mode"] == "open":
            result["offered_rps"] = spec["rate"]
        else:
            result["connections"] = spec["connections"]
        self.phases[name] = result
        if result["ok"] != result["requests"] or result["errors"]:
            self.notes.append(
                f"{name}: {result['requests'] - result['ok']} non-2xx answers "
                f"{result['statuses']}, errors {result['errors']}"
            )
        if expect_cache and result["header_values"].get(expect_cache, 0) != result["ok"]:
            self.notes.append(
                f"{name}: expected every answer to be a cache {expect_cache}, "
                f"got {result['header_values']}"
            )
        print(
            f"  {name:<28} {result['ok']:>7} ok  {result['rps']:>9.1f} req/s  "
            f"p50 {result['latency_ms']['p50']:.3f} ms  p99 {result['latency_ms']['p99']:.3f} ms",
            flush=True,
        )
        return result


def run_benchmark(args: argparse.Namespace, runner: Runner) -> dict[str, Any]:
    sim, gw = runner.info["simulator"], runner.info.get("gateway")
    sim_auth = f"Bearer {UPSTREAM_KEY}"
    gw_auth = f"Bearer {CLIENT_KEY}"
    rate = args.rate
    figures: dict[str, Any] = {}
    notes = runner.notes

    direct = runner.phase(
        "direct_open_chat", sim, chat_request(sim_auth, unique=True), mode="open", rate=rate
    )
    runner.phase("direct_closed_chat", sim, chat_request(sim_auth, unique=True), mode="closed")
    direct_stream = runner.phase(
        "direct_open_stream",
        sim,
        chat_request(sim_auth, unique=True, stream=True),
        mode="open",
        rate=args.stream_rate,
    )
    if gw is None:
        notes.append("simulator only (--simulator-only): no gateway figures")
        return {"figures": figures, "notes": notes}

    closed = runner.phase(
        "gateway_closed_cache_miss",
        gw,
        chat_request(gw_auth, unique=True),
        expect_cache="miss",
        mode="closed",
    )
    figures["cache_miss_rps"] = closed["rps"]
    gateway_cpu = closed["cpu_cores_used"].get("gateway", 0)
    figures["cache_miss_gateway_cpu_cores"] = gateway_cpu
    cpu_us = closed["cpu_us_per_request"].get("gateway")
    figures["cache_miss_gateway_cpu_us_per_request"] = cpu_us
    # What one dedicated core would sustain at that CPU cost per request.
    figures["cache_miss_rps_one_core_projected"] = round(1e6 / cpu_us) if cpu_us else None
    if gateway_cpu < 0.9:
        notes.append(
            f"max cache-miss req/s: the gateway used {gateway_cpu:.2f} of its core, so the figure "
            "is bounded by the load generator and simulator sharing the other core(s), not by the "
            "gateway; a machine with more cores would show more"
        )

    steady = runner.phase(
        "gateway_open_cache_miss",
        gw,
        chat_request(gw_auth, unique=True),
        expect_cache="miss",
        mode="open",
        rate=rate,
    )
    figures["added_latency_p50_ms"] = round(
        steady["latency_ms"]["p50"] - direct["latency_ms"]["p50"], 3
    )
    figures["added_latency_p99_ms"] = round(
        steady["latency_ms"]["p99"] - direct["latency_ms"]["p99"], 3
    )
    figures["gateway_reported_overhead_ms"] = steady["numeric_header"]

    hit_request = chat_request(gw_auth, unique=False)
    http_json(gw + hit_request["path"], hit_request["headers"], hit_request["body"])  # prime
    hits = runner.phase(
        "gateway_open_cache_hit", gw, hit_request, expect_cache="hit", mode="open", rate=rate
    )
    figures["cache_hit_p50_ms"] = hits["latency_ms"]["p50"]
    figures["cache_hit_p99_ms"] = hits["latency_ms"]["p99"]

    gw_stream = runner.phase(
        "gateway_open_stream",
        gw,
        chat_request(gw_auth, unique=True, stream=True),
        expect_cache="miss",
        mode="open",
        rate=args.stream_rate,
    )
    figures["stream_ttft_direct_p50_ms"] = direct_stream["first_byte_ms"]["p50"]
    figures["stream_ttft_gateway_p50_ms"] = gw_stream["first_byte_ms"]["p50"]
    figures["stream_ttft_overhead_ms"] = round(
        gw_stream["first_byte_ms"]["p50"] - direct_stream["first_byte_ms"]["p50"], 3
    )

    for name, load in (
        ("gateway_open_batching", {"mode": "open", "rate": rate}),
        ("gateway_closed_batching", {"mode": "closed"}),
    ):
        before = http_json(sim + "/_simulator/stats")
        result = runner.phase(name, gw, completion_request(gw_auth), expect_cache="bypass", **load)
        after = http_json(sim + "/_simulator/stats")
        upstream_calls = after["completions_requests"] - before["completions_requests"]
        prompts = after["completions_prompts"] - before["completions_prompts"]
        served = result["ok"]
        result["upstream_calls"] = upstream_calls
        result["upstream_prompts"] = prompts
        key = name.removeprefix("gateway_")
        figures[f"{key}_calls_saved_fraction"] = (
            round(1 - upstream_calls / prompts, 3) if prompts else None
        )
        figures[f"{key}_prompts_per_upstream_call"] = (
            round(prompts / upstream_calls, 2) if upstream_calls else None
        )
        if prompts < served:
            notes.append(f"{name}: simulator saw {prompts} prompts for {served} answered requests")
    return {"figures": figures, "notes": notes}


def median_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key in runs[-1]:
        values = [run.get(key) for run in runs]
        numbers = [v for v in values if isinstance(v, int | float)]
        merged[key] = (
            round(statistics.median(numbers), 3) if len(numbers) == len(values) else (values[-1])
        )
    return merged


def verdicts(figures: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, (op, target, unit) in TARGETS.items():
        measured = figures.get(name)
        passed = None
        if isinstance(measured, int | float):
            passed = {">=": measured >= target, "<=": measured <= target, "<": measured < target}[
                op
            ]
        out.append(
            {
                "name": name,
                "target": f"{op} {target:g} {unit}",
                "measured": measured,
                "pass": passed,
            }
        )
    return out


def print_table(results: dict[str, Any]) -> None:
    print()
    print(f"{'target':<26} {'goal':<22} {'measured':>10}  result")
    for v in results["targets"]:
        result = {True: "PASS", False: "FAIL", None: "n/a"}[v["pass"]]
        measured = "-" if v["measured"] is None else f"{v['measured']:.3f}"
        print(f"{v['name']:<26} {v['target']:<22} {measured:>10}  {result}")
    extra = {k: v for k, v in results["figures"].items() if k not in TARGETS}
    for key, value in extra.items():
        print(f"  {key}: {value}")
    for note in results["notes"]:
        print(f"note: {note}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per phase")
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="seconds of unmeasured load first"
    )
    parser.add_argument("--connections", type=int, default=64, help="closed-loop connections")
    parser.add_argument("--rate", type=float, default=500.0, help="open-loop requests/s")
    parser.add_argument("--stream-rate", type=float, default=100.0, help="open-loop streams/s")
    parser.add_argument("--ttft-ms", type=float, default=0.0, help="simulator time to first token")
    parser.add_argument("--token-ms", type=float, default=0.0, help="simulator delay per token")
    parser.add_argument("--no-redis", action="store_true", help="in-process cache and limiter")
    parser.add_argument("--simulator-only", action="store_true", help="no gateway (harness check)")
    parser.add_argument(
        "--log-level", default="INFO", help="gateway log level (INFO keeps the access log)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of every phase; figures are their medians"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    args = parser.parse_args(argv)
    for name in ("duration", "rate", "stream_rate"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0")
    if args.connections < 1:
        parser.error("--connections must be >= 1")
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = CpuPlan()
    started = dt.datetime.now(dt.UTC)
    machine = machine_info(plan)  # before any load, so the load average is the machine's own
    workdir = Path(tempfile.mkdtemp(prefix="liftoff-bench-"))
    print(f"liftoff bench: {args.duration:g} s per phase, logs in {workdir}", flush=True)
    runs: list[dict[str, Any]] = []
    notes: list[str] = []
    keep_logs = False
    with stack(args, plan, workdir) as info:
        for number in range(1, args.repeat + 1):
            if args.repeat > 1:
                print(f"run {number} of {args.repeat}", flush=True)
            runner = Runner(args, plan, info)
            outcome = run_benchmark(args, runner)
            runs.append({"figures": outcome["figures"], "phases": runner.phases})
            prefix = f"run {number}: " if args.repeat > 1 else ""
            notes.extend(prefix + note for note in outcome["notes"])
        gateway = info["children"].get("gateway")
        if gateway is not None:
            errors = gateway.count_log_errors()
            if errors:
                keep_logs = True
                notes.append(
                    f"the gateway logged {errors} error line(s) during the run: see "
                    f"{gateway.log_path} before trusting the figures"
                )
    if not keep_logs:
        shutil.rmtree(workdir, ignore_errors=True)
    # Several runs: each figure is the median of the runs, robust to one noisy run.
    figures = median_figures([run["figures"] for run in runs])
    load_1m = machine["loadavg_1m_5m_15m"][0]
    if load_1m > 0.5 * (machine["cpus_usable"] or 1):
        notes.append(
            f"the machine was busy before the run (1-minute load {load_1m} on "
            f"{machine['cpus_usable']} CPUs): tails and throughput are pessimistic; rerun when idle"
        )
    results = {
        "generated_at": started.isoformat(timespec="seconds"),
        "machine": machine,
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "open_loop_rps": args.rate,
            "stream_rps": args.stream_rate,
            "simulator_ttft_ms": args.ttft_ms,
            "simulator_token_ms": args.token_ms,
            "gateway": {
                "workers": 1,
                "log_level": args.log_level,
                "config": info.get("config"),
                "features": "auth, limits, cache, accounting, metrics, batching (defaults.yaml)",
            },
            "redis": info.get("redis", "not started (--simulator-only)"),
            "request": {"model": MODEL, "max_tokens": 16},
        },
        "figures": figures,
        "targets": verdicts(figures),
        "phases": runs[-1]["phases"],  # the last run; every run's are under "runs"
        "runs": runs if args.repeat > 1 else None,
        "notes": notes,
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
